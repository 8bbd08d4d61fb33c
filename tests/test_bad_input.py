"""Every entry point refuses bad input with one line, no traceback, exit status 2, and leaves the user's files
alone: every checkpoint, bin, weights file and summary in the test's folder is byte-identical afterwards.

Each row: the entry point, its arguments, a piece of the expected line, and paths (relative to the test's
folder) that must not come to exist. `{tmp}` stands for the test's folder, `{ckpt}` for a trained
checkpoint, `{unwritable}` for a folder nothing can be written into. Each row runs the entry point's main()
in this process, as the command line would.
"""

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import optuna
import pytest
import torch
from helpers import FIXTURES, SHAKESPEARE, compose_train

from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.checkpoints.record import architecture_record
from lmzoo.files import LOCK, hold_folder
from lmzoo.models import BigramConfig
from lmzoo.models.base import SequenceMixer
from lmzoo.models.blocks import Attention, LocalAttention
from lmzoo.models.moa import MixtureOfAttention
from lmzoo.models.presets import preset, preset_names
from lmzoo.training.run import train

BASE = [f"data.path={SHAKESPEARE}", "paths.data_dir={tmp}/data", "hydra.run.dir={tmp}/run", "trainer=debug",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "block_size=32", "sample_tokens=0"]
TRAIN = [*BASE, "model.n_layer=2", "model.n_head=2", "model.n_embd=32"]
RESUME = [*TRAIN, "ckpt_path={ckpt}"]
BLOCK_SCALING = [*BASE, "model=block_scaling", "model.n_layer=2", "model.n_embd=32", "model.n_head=4"]
MOE = [*TRAIN, "model=moe"]
EVALUATE = ["ckpt={ckpt}", "paths.data_dir={tmp}/data"]
TASK = ["data=mqar", "hydra.run.dir={tmp}/run", "trainer=debug", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "sample_tokens=0", "model.n_layer=2", "model.n_embd=32"]
PREPARE = ["paths.data_dir={tmp}/data"]
NO_CUDA = not torch.cuda.is_available()
# The attention (global and local), by their registered names.
GLOBAL, LOCAL, MOA = Attention.name, LocalAttention.name, MixtureOfAttention.name
# Each mixer a preset holds, with its first knob that counts something (a positive integer by default).
COUNTED_KNOBS = list({mixer: (name, mixer, knob) for name in preset_names()
                      for mixer in preset(name).settings.get("layer_pattern", [])
                      for knob in [next((f.name for f in dataclasses.fields(SequenceMixer.registry[mixer].Settings)
                                         if isinstance(f.default, int) and not isinstance(f.default, bool)
                                         and f.default >= 1), None)] if knob}.values())
# A mixer gpt_rope does not hold, and a knob of it.
OTHER = next(name for name in SequenceMixer.registry if name != GLOBAL and dataclasses.fields(
    SequenceMixer.registry[name].Settings))
OTHER_KNOB = dataclasses.fields(SequenceMixer.registry[OTHER].Settings)[0].name
# The hybrid preset's layer pattern, whose last part is in none of the layers before it.
HYBRID = preset("hybrid").settings["layer_pattern"]

CASES = [
    # train: the command line and the config
    ("train", [*TRAIN, "model.n_layr=2"], "model has no key n_layr (did you mean n_layer?)", []),
    ("train", [*TRAIN, "n_layer=2"], "the config has no key n_layer", []),
    ("train", [*TRAIN, "model=transformer9"], "model=transformer9 is not an option; choose one of bigram,", []),
    ("train", [*TRAIN, "trainer=gpu9"], "trainer=gpu9 is not an option", []),
    ("train", [*TRAIN, "block_size=many"], "block_size must be an integer", []),
    ("train", [*TRAIN, "block_size=0"], "block_size must be positive, got 0", []),
    ("train", [*TRAIN, "seed=abc"], "seed must be an integer, got 'abc'", []),
    ("train", [*TRAIN, "seed=-1"], "seed must lie in [0, 2**32)", []),
    ("train", [*TRAIN, "sample_tokens=-5"], "sample_tokens must be >= 0", []),
    ("train", [*TRAIN, "compile=maybe"], "compile must be true, false or auto", []),
    ("train", [*TRAIN, "resume=sometimes"], "resume='sometimes' is not understood", []),
    ("train", [*TRAIN, "ckpt_path={ckpt}", "init_from={ckpt}"], "{ckpt} continues a run trained from scratch, whose "
     "weights replace init_from's; leave init_from={ckpt} out", []),
    ("train", [*TRAIN, "hydra.run.dir="], "hydra.run.dir is empty; name a folder, such as hydra.run.dir=outputs/runs/NAME",
     []),
    ("train", [*TRAIN, "finetune=lora"], "a finetune recipe needs pretrained weights", []),
    # The adapters' update is scaled by alpha / r: at 0 they get no gradient and the run trains nothing.
    ("train", [*TRAIN, "init_from={ckpt}", "finetune=lora", "finetune.alpha=0"], "finetune.alpha must be a positive "
     "number (the adapters' update is scaled by alpha / r), got 0", []),
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", "init_from={ckpt}", "finetune=lora", "finetune.dropout=1"],
     "finetune.dropout must lie in [0, 1), got 1", ["unprepared"]),
    # train: the model
    ("train", [*TRAIN, "model.n_layer=abc"], "model.n_layer must be an integer, got 'abc'", []),
    ("train", [*TRAIN, "model.n_layer=2.5"], "model.n_layer must be an integer, got 2.5", []),
    ("train", [*TRAIN, "model.n_layer=0"], "model.n_layer must be a positive integer, got 0", []),
    ("train", [*TRAIN, "model.n_head=0"], "model.n_head must be a positive integer, got 0", []),
    # The model's and optimizer's settings are checked before the data is prepared.
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", "model.n_head=0"], "model.n_head must be a positive integer",
     ["unprepared"]),
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", "optim.lr=0"], "optim.lr must be positive", ["unprepared"]),
    ("train", [*TRAIN, "model.n_embd=30", "model.n_head=4"], "model.n_embd must be a positive multiple of n_head (4)", []),
    # Heads of an odd size, which RoPE cannot rotate in pairs (it crashed at the first step, after the data).
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", "model.n_embd=6", "model.n_head=2"], "model.n_embd / n_head "
     "must be even with positions rope, which rotates each head's channels in pairs: choose another model.n_head, or "
     "model.positions=learned, got 3", ["unprepared"]),
    ("train", [*TRAIN, "model.n_embd=2", "model.n_head=2"], "model.n_embd / n_head must be even with positions rope", []),
    # A layer pattern longer than the model is deep, whose last part no layer built (the hybrid preset's attention).
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", "model=hybrid", "model.n_layer=2"],
     f"model.n_layer=2 builds the first 2 of model.layer_pattern [{', '.join(HYBRID)}] and no {HYBRID[-1]} layer; "
     f"set model.n_layer to {len(HYBRID)} or more, or a model.layer_pattern without {HYBRID[-1]}", ["unprepared"]),
    ("train", [*TRAIN, "model.n_layer=1", "model.ffn_pattern=[mlp,moe]"], "model.n_layer=1 builds the first 1 of "
     "model.ffn_pattern [mlp, moe] and no moe layer", []),
    ("train", [*TRAIN, f"model.mixers.{GLOBAL}.n_kv_head=3"], f"model.mixers.{GLOBAL}.n_kv_head must divide n_head (2)",
     []),
    ("train", [*TRAIN, "model.pad_vocab_to=0"], "model.pad_vocab_to must be a positive integer, got 0", []),
    # The first counted knob of each mixer a preset holds, at 0.
    *[("train", [*TRAIN, f"model={preset}", f"model.mixers.{mixer}.{knob}=0"],
       f"model.mixers.{mixer}.{knob} must be a positive integer", []) for preset, mixer, knob in COUNTED_KNOBS],
    # A knob of a mixer the layer pattern does not hold, and lmzoo 0.2's flat key of a mixer's knob.
    ("train", [*TRAIN, f"model.mixers.{OTHER}.{OTHER_KNOB}=3"], f"model.mixers.{OTHER}.{OTHER_KNOB} sets {OTHER} "
     f"layers, and model.layer_pattern [{GLOBAL}] has none; add {OTHER} to model.layer_pattern, or leave "
     f"model.mixers.{OTHER} out", []),
    ("train", [*TRAIN, "model.qk_norm=true"], "model.qk_norm is a knob of the parts that have it now: set "
     f"model.mixers.{GLOBAL}.qk_norm", []),
    # A window on a model without local layers (it was ignored), as typed and in this release's spelling.
    ("train", [*TRAIN, "model.window=8"], f"model.window is a knob of the parts that have it now: set "
     f"model.mixers.{LOCAL}.window", []),
    ("train", [*TRAIN, "paths.data_dir={tmp}/unprepared", f"model.mixers.{LOCAL}.window=8"],
     f"model.mixers.{LOCAL}.window sets {LOCAL} layers, and model.layer_pattern [{GLOBAL}] has none; add {LOCAL} to "
     f"model.layer_pattern, or leave model.mixers.{LOCAL} out", ["unprepared"]),
    ("train", [*TRAIN, "model.dropout=1"], "model.dropout must lie in [0, 1), got 1", []),
    ("train", [*TRAIN, "model.dropout=-0.1"], "model.dropout must lie in [0, 1)", []),
    ("train", [*TRAIN, "model.ffns.mlp.activation=tanh9"], "model.ffns.mlp.activation must be one of", []),
    ("train", [*TRAIN, "model.init=xavier"], "model.init must be one of gpt2, plain, unit_mlp, got 'xavier'", []),
    ("train", [*TRAIN, "model.positions=alibi"], "model.positions must be one of learned, rope", []),
    ("train", [*TRAIN, "model.rope_base=0"], "model.rope_base must be positive, got 0", []),
    ("train", [*TRAIN, "model.ffns.mlp.ratio=-1"], "model.ffns.mlp.ratio must be positive (an empty "
     "model.ffn_pattern has no feed-forward layer), got -1", []),
    ("train", [*TRAIN, "model.ffn_pattern=[mlp,moe9]"], "model.ffn_pattern must list feed-forward parts of", []),
    ("train", [*TRAIN, "model.mlp_ratio=0"], "model.mlp_ratio is a knob of the parts that have it now: set "
     "model.ffns.mlp.ratio", []),
    ("train", [*TRAIN, "model.bias=maybe"], "model.bias must be true or false", []),
    ("train", [*MOE, "model.ffns.moe.capacity_factor=0"], "model.ffns.moe.capacity_factor must be positive or null, "
     "got 0", []),
    ("train", [*MOE, "model.ffns.moe.capacity_factor=-1"], "model.ffns.moe.capacity_factor must be positive or null, "
     "got -1", []),
    ("train", [*MOE, "model.ffns.moe.top_k=5"], "model.ffns.moe.top_k must lie in 1..n_experts (4), got 5", []),
    ("train", [*MOE, "model.ffns.moe.top_k=0"], "model.ffns.moe.top_k must lie in 1..n_experts (4), got 0", []),
    ("train", [*MOE, "model.ffns.moe.n_experts=0"], "model.ffns.moe.n_experts must be a positive integer, got 0", []),
    ("train", [*MOE, "model.ffns.moe.balance_weight=-1"], "model.ffns.moe.balance_weight must be >= 0", []),
    ("train", [*TRAIN, "model.ffns.moe.top_k=1"], "model.ffns.moe.top_k sets moe layers, and model.ffn_pattern [mlp] "
     "has none; add moe to model.ffn_pattern, or leave model.ffns.moe out", []),
    ("train", [*BASE, "model=moa_moe", "model.n_embd=32", f"model.mixers.{MOA}.top_k=9"],
     f"model.mixers.{MOA}.top_k must lie in 1..n_experts (8), got 9", []),
    # train: the attention variants
    ("train", [*TRAIN, "model=swa", f"model.mixers.{LOCAL}.window=64"],
     f"model.mixers.{LOCAL}.window must lie in 1..block_size (32), got 64", []),
    ("train", [*TRAIN, "model=swa", f"model.mixers.{LOCAL}.window=0"], f"model.mixers.{LOCAL}.window must lie in "
     "1..block_size (32)", []),
    ("train", [*TRAIN, f"model.layer_pattern=[{GLOBAL},mamba9]"],
     f"model.layer_pattern must list layers of {', '.join(SequenceMixer.registry)}, got ['{GLOBAL}', 'mamba9']", []),
    ("train", [*TRAIN, "model.layer_pattern=[]"], "model.layer_pattern must list layers of", []),
    ("train", [*TRAIN, f"model.mixers.{GLOBAL}.variant=linear"],
     f"model.mixers.{GLOBAL}.variant must be one of standard, mla, differential, got 'linear'", []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.kv_rank=0"],
     f"model.mixers.{GLOBAL}.kv_rank must be a positive integer (the latent's rank) or null, got 0", []),
    ("train", [*TRAIN, "model=mla", "model.kv_rank=100000"], "model.kv_rank is a knob of the parts that have it now: "
     f"set model.mixers.{GLOBAL}.kv_rank", []),
    # A latent larger than what it stands for (19.4M parameters at width 32 once); 0.2's checkpoints that have
    # one still load (tests/test_legacy.py).
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.kv_rank=100000"], f"model.mixers.{GLOBAL}.kv_rank must "
     "be at most 2 x n_embd (64), the keys and values of a token its latent stands for; null: n_embd / 2, got 100000",
     []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.q_rank=33"], f"model.mixers.{GLOBAL}.q_rank must be at "
     "most n_embd (32)", []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.rope_head_dim=18"], f"model.mixers.{GLOBAL}.rope_head_dim "
     "must be at most the head size, n_embd / n_head (16)", []),
    # Trunk knobs only mixers read, typed for a model none of whose mixers does.
    ("train", [*BASE, "model=mamba2", "model.n_layer=1", "model.n_embd=32", "model.n_head=8"],
     "model.n_head is read by none of this model's layers (mamba2): leave it out, or set their own knobs, "
     "model.mixers.NAME.*", []),
    ("train", [*BASE, "model=mamba2", "model.n_layer=1", "model.n_embd=32", "model.rope_base=500"],
     "model.rope_base is read by none of this model's layers (mamba2)", []),
    ("train", [*TRAIN, "model=gpt", "model.rope_base=500"], "model.rope_base sets RoPE, which "
     "model.positions=learned does not use: leave it out, or set model.positions=rope", []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.rope_head_dim=3"],
     f"model.mixers.{GLOBAL}.rope_head_dim must be a positive even integer or null, got 3", []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.q_rank=0"],
     f"model.mixers.{GLOBAL}.q_rank must be a positive integer or null, got 0", []),
    ("train", [*TRAIN, "model=mla", f"model.mixers.{GLOBAL}.qk_norm=true"],
     f"model.mixers.{GLOBAL}.qk_norm does not apply to mla", []),
    ("train", [*TRAIN, f"model.mixers.{GLOBAL}.kv_rank=8"], f"model.mixers.{GLOBAL}.kv_rank, rope_head_dim and q_rank "
     f"are mla's; set model.mixers.{GLOBAL}.variant=mla or leave them null", []),
    ("train", [*TRAIN, "model=mla", "model.positions=learned"], "model.positions must be rope for mla", []),
    ("train", [*TRAIN, "model=diff_attn", "model.n_head=1"],
     f"model.n_head and model.mixers.{GLOBAL}.n_kv_head must be even for differential attention, which pairs "
     "heads, got (1, 1)", []),
    ("train", [*BLOCK_SCALING, f"model.mixers.{GLOBAL}.variant=mla"], f"model.mixers.{GLOBAL}.qkv_multipliers gives "
     f"each layer's heads (in groups of model.mixers.{GLOBAL}.gqa_groups) for the standard variant", []),
    ("train", [*BLOCK_SCALING, f"model.mixers.{GLOBAL}.qkv_multipliers=[1]"],
     f"model.mixers.{GLOBAL}.qkv_multipliers must be a list of 2 numbers", []),
    ("train", [*BLOCK_SCALING, "model.ffns.mlp.multipliers=[1,2,3]"], "model.ffns.mlp.multipliers must be a list of 2 "
     "numbers", []),
    ("train", [*BLOCK_SCALING, f"model.mixers.{GLOBAL}.qkv_multipliers=[0,1]"],
     f"model.mixers.{GLOBAL}.qkv_multipliers must be positive", []),
    ("train", [*BLOCK_SCALING, f"model.mixers.{GLOBAL}.gqa_groups=0"],
     f"model.mixers.{GLOBAL}.gqa_groups must be a positive integer", []),
    ("train", [*BLOCK_SCALING, "model.ffns.mlp.ratio=3"], "model.ffns.mlp.ratio does not apply with "
     "model.ffns.mlp.multipliers", []),
    ("train", [*BASE, "model=mlp", "model.context=0"], "model.context must be a positive integer, got 0", []),
    ("train", [*BASE, "model=mlp", "model.n_layer=2"], "model has no key n_layer; its keys are context,", []),
    ("train", [*BASE, "model=mlp", "model.input_encoding=onehot"], "model.input_encoding must be one of embedding", []),
    ("train", [*BASE, "model=mlp", "model.input_encoding=permutation", "model.code_bits=6"],
     "C(6, 3) = 20 codes for a vocabulary of 65; use code_bits=8 or more", []),
    ("train", [*BASE, "model=mla", f"model.mixers.{GLOBAL}.n_kv_head=2"], f"model.mixers.{GLOBAL}.n_kv_head does not "
     f"apply to mla, whose keys and values all come from one latent per token (model.mixers.{GLOBAL}.kv_rank sets its "
     "size); "
     "leave it null, got 2", []),
    ("train", [*BASE, "model=bigram", "model.n_embd=8"], "model has no key n_embd; its keys are target_params", []),
    # train: a synthetic task's settings, refused before the run writes anything
    ("train", [*TASK, "block_size=128", "data.num_kv_pairs=40"], "block_size 128 is too short for "
     "data.num_kv_pairs=40: the pairs and the queries take at least 4 x 40 = 160 tokens", ["run/provenance.json"]),
    ("train", [*TASK, "data.filler=noise"], "data.filler must be one of random, blank, got 'noise'", []),
    ("train", [*TASK, "data.num_kv_pairs=1", "block_size=4", "data.vocab_size=4", "data.filler=blank",
               "data.train_examples=50"], "data=mqar has too few distinct examples for 8 val examples apart from the "
     "50 training ones", ["run/provenance.json"]),
    ("train", [*TASK, "data=selective_copying", "data.num_tokens_to_copy=40", "block_size=64"],
     "block_size 64 is too short for data.num_tokens_to_copy=40", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_monitor", "tune.monitor=val/accuracy"],
     "tune.monitor=val/accuracy needs a synthetic task", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_monitor_bpb", "tune.monitor=val/bpb"],
     "tune.monitor must be one of val/loss, val/accuracy, got 'val/bpb'", []),
    ("tune", [*TASK, "hydra.sweep.dir={tmp}/tune_monitor_repeats", "tune.monitor=val/accuracy",
              "tune.repeats=2"],
     "tune.monitor=val/accuracy takes the best trial's values, so set tune.repeats=0", []),
    # train: the optimizer and the trainer
    ("train", [*TRAIN, "optim.lr=abc"], "optim.lr must be a number, got 'abc'", []),
    ("train", [*TRAIN, "optim.lr=0"], "optim.lr must be positive", []),
    ("train", [*TRAIN, "optim.weight_decay=-1"], "optim.weight_decay must be >= 0, got -1", []),
    ("train", [*TRAIN, "optim.warmup_steps=50"], "optim.warmup_steps=50 exceeds optim.decay_steps=20", []),
    ("train", [*TRAIN, "experiment=reference"], "tuned=outputs/tunes/reference/tuned.yaml does not exist", []),
    ("train", [*TRAIN, "tuned={tmp}/tuned.yaml"], "tuned={tmp}/tuned.yaml does not exist; pass the tuned.yaml", []),
    ("train", [*TRAIN, "tuned={tmp}/bad_tuned.yaml"], "{tmp}/bad_tuned.yaml is not valid YAML (expected ',' or ']', "
     "but got '<stream end>' at line 3, column 1); pass the tuned.yaml", []),
    ("train", [*TRAIN, "tuned={tmp}/scalar_tuned.yaml"], "{tmp}/scalar_tuned.yaml holds 0.003 for model=gpt_rope, not "
     "its tuned values by key", []),
    ("train", [*TRAIN, "tuned_at=sideways"], "tuned_at=sideways is not one of chosen, lower, upper", []),
    ("train", [*TRAIN, "tuned_at=lower"], "tuned_at=lower takes a value beside a tuned one, and the run has none; pass "
     "tuned=PATH", []),
    ("train", [*TRAIN, "tuned={tmp}/tuned_by_0.2.yaml", "tuned_at=upper"], "{tmp}/tuned_by_0.2.yaml holds no searched "
     "values beside model=gpt_rope's tuned ones", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_range", "tune.search.optim.lr=[1e-2,1e-4]"],
     "tune.search.optim.lr must be a range [low, high] with low < high", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_key", "+tune.search.optim.lrr=[1e-4,1e-2]"],
     "tune.search.optim.lrr: the config has no key optim.lrr", []),
    # A range past a limit of the run would fail every trial near that end (lr below an absolute optim.min_lr).
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_ends", "budget.flops=1e9", "optim.min_lr=1e-4",
              "tune.search.optim.lr=[1e-5,1e-2]"], "tune.search.optim.lr reaches 1e-05, which a run refuses (optim."
     "min_lr must lie within [0, lr] (or be null: optim.min_lr_ratio of lr); got 0.0001 with optim.lr=1e-05); search "
     "a range the run accepts", []),
    # A mistake every trial would make stops the tune before its first trial.
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_data", "data.path={tmp}/missing.txt"],
     "data file '{tmp}/missing.txt' does not exist", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_trainer", "trainer.max_steps=-5"],
     "trainer.max_steps must be a positive integer, got -5", []),
    # One that only a trial finds fails every trial, and the tune with it: no tuned value, no final command.
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_budget", "budget.flops=1e3", "tune.trials=2"],
     "no trial of bigram finished, so it has no tuned value; the last failed with: budget.flops=1000 is less than "
     "one step", ["tune_budget/tuned.yaml"]),
    # A tune is one study per model in its folder.
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_seeds", "seed=1,2"], "a tune holds one study per "
     "model, and seed=1,2 would make 2 of each; give seed one value (the trials train with one seed", ["tune_seeds"]),
    ("tune", [*BASE, "model=bigram,mlp,bigram", "hydra.sweep.dir={tmp}/tune_twice"], "model=bigram,mlp,bigram names "
     "bigram more than once", ["tune_twice"]),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_final", "seed=2",
              "tune.final=['experiment=reference']"], "the final comparison (tune.final=experiment=reference) runs "
     "seed=1,2,3, among them the trials' seed=2; tune with another seed", ["tune_final"]),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_repeats", "seed=0", "tune.repeats=2",
              "tune.final=['experiment=reference']"], "runs seed=1,2,3, among them the trials' seed=1,2; tune with "
     "another seed", ["tune_repeats"]),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_repeats", "tune.repeats=-1"],
     "tune.repeats must be >= 0 (0: no repeats), got -1", ["tune_repeats"]),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_other", "tune.search.optim.lr=[1e-3,1e-1]"],
     "{tmp}/tune_other/model-bigram holds the study of model=bigram over tune.search optim.lr=[0.0001,0.03], not "
     "optim.lr=[0.001,0.1]; add trials to it with that search, or tune it in another tune.folder", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_earlier"], "{tmp}/tune_earlier holds the study of "
     "model=bigram in 0_model-bigram, a folder named after its job by an earlier lmzoo; rename it to model-bigram", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_garbage"], "{tmp}/tune_garbage/model-bigram/study.db "
     "cannot be used as a study (file is not a database); move it away to start this model's study again, or choose "
     "another tune.folder", []),
    ("tune", [*BASE, "model=bigram", "hydra.sweep.dir={tmp}/tune_truncated"], "{tmp}/tune_truncated/model-bigram/"
     "study.db cannot be used as a study (database disk image is malformed)", []),
    ("train", [*TRAIN, "optim.schedule=linear"], "optim.schedule must be one of cosine, wsd, got 'linear'", []),
    ("train", [*TRAIN, "optim.warmup_fraction=1.5"], "optim.warmup_fraction must lie in [0, 1)", []),
    ("train", [*TRAIN, "optim.schedule=wsd", "optim.warmup_steps=null", "optim.warmup_fraction=0.5",
               "optim.decay_fraction=0.6"], "optim.warmup_fraction + optim.decay_fraction must be at most 1", []),
    ("train", [*TRAIN, "optim.beta2=1"], "optim.beta2 must lie in [0, 1), got 1", []),
    ("train", [*TRAIN, "optim.eps=0"], "optim.eps must be positive", []),
    ("train", [*TRAIN, "trainer.max_steps=-5"], "trainer.max_steps must be a positive integer, got -5", []),
    ("train", [*TRAIN, "trainer.val_check_interval=0"], "trainer.val_check_interval must be a positive integer, got 0",
     []),
    ("train", [*TRAIN, "trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be a positive "
     "integer, got 0", []),
    ("train", [*TRAIN, "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be a positive integer", []),
    ("train", [*TRAIN, "trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be >= 0 or null", []),
    ("train", [*TRAIN, "trainer.peak_flops=-1"], "trainer.peak_flops must be the hardware's peak FLOP/s", []),
    # train: budgets, sizes and Muon
    ("train", [*TRAIN, "budget.flops=1e12", "budget.tokens=1e6"], "give one budget, not budget.flops=1000000000000.0 "
     "and budget.tokens=1000000.0", []),
    ("train", [*TRAIN, "budget.tokens=100"], "budget.tokens=100 is less than one step (128 tokens); raise it", []),
    ("train", [*TRAIN, "budget.flops=1e5"], "budget.flops=100000 is less than one step (", []),
    ("train", [*TRAIN, "budget.tokens=300"], "budget.tokens=300 gives 2 steps, no more than optim.warmup_steps=2", []),
    ("train", [*TRAIN, "budget.flops=nan"], "budget.flops must be positive and finite (or null), got nan", []),
    ("train", [*TRAIN, "budget.tokens=inf"], "budget.tokens must be positive and finite (or null), got inf", []),
    ("train", [*TRAIN, "budget.minutes=0"], "budget.minutes must be positive and finite (or null), got 0", []),
    ("train", [*TRAIN, "budget.minutes=soon"], "budget.minutes must be a number or null, got 'soon'", []),
    ("train", [*TRAIN, "budget.tokens=1e6", "budget.max_steps=0"], "budget.max_steps must be positive and finite (or null), got 0",
     []),
    ("train", [*TRAIN, "budget.max_steps=10"], "budget.max_steps caps the steps of budget.flops or budget.tokens", []),
    # A budget's steps replace trainer.max_steps: typed beside one, it would be dropped without a word.
    ("train", [*TRAIN, "budget.tokens=1e5", "trainer.max_steps=5"], "trainer.max_steps=5 is set beside "
     "budget.tokens=100000, whose steps replace it; cap the budget's steps with budget.max_steps=5", []),
    ("train", [*TRAIN, "budget.tokens=1e6", "budget.max_steps=2"], "budget.max_steps=2 is no more than "
     "optim.warmup_steps=2", []),
    ("train", [*TRAIN, "model.target_params=1e3"], "model.target_params=1000: no n_embd comes within 5% of it "
     "(model.n_embd=8 gives 2,584 active parameters)", []),
    # Below the smallest 4-layer gpt_rope: the smallest width is the nearest.
    ("train", [*BASE, "model.target_params=1e4"], "model.target_params=10000: no n_embd comes within 5% of it "
     "(model.n_embd=16 gives 14,352 active parameters)", []),
    ("train", [*TRAIN, "model.target_params=1e12"], "more than this machine's", []),
    ("train", [*TRAIN, "+model.foo=1"], "model has no key foo; its keys are vocab_size, target_params,", []),
    ("train", [*TRAIN, "+optim.betas=1"], "optim has no key betas (did you mean beta", []),
    ("train", [*TRAIN, "++trainer.bogus=1"], "trainer has no key bogus; see conf/trainer/default.yaml", []),
    ("train", [*TRAIN, "++model.layer_pattern.nosuch=abc"], "an override does not fit the config (ValueError: invalid "
     "literal for int() with base 10: 'nosuch'); the items of a list are set by their index", []),
    ("train", [*TRAIN, "++trainer.max_step=1"], "trainer has no key max_step (did you mean max_steps?)", []),
    ("train", [*TRAIN, "model._target_=nosuch.Config"], "model._target_=nosuch.Config names no class lmzoo can import",
     []),
    ("train", [*TRAIN, "model.n_layer=${{oops}}"], "model.n_layer=${{oops}} does not resolve (Interpolation key 'oops' "
     "not found); interpolate a key the config has", []),
    ("train", [*TRAIN, "optim.lr=${{oops}}"], "optim.lr=${{oops}} does not resolve", []),
    ("train", [*TRAIN, "~seed"], "seed is needed, and ~seed deleted it", []),
    # A config group set to none of its options (the slow fuzzer's find) deletes its key as ~KEY does.
    ("train", [*TRAIN, "finetune=[]"], "finetune is needed, and finetune=[] deleted it; leave it out, or set "
     "finetune=VALUE", []),
    ("train", [*BASE, "model=[]"], "model is needed, and model=[] deleted it", []),
    # The slow fuzzer's finds: a section whose _target_ is deleted or imports a module; a key budget lacks; a key
    # added under a string.
    ("train", [*TRAIN, "~model._target_"], "model._target_ is deleted; leave model._target_ as the config has it "
     "(choose another model with model=OPTION)", []),
    ("train", [*TRAIN, "~optim._target_"], "optim._target_ is deleted", []),
    ("train", [*TRAIN, "~trainer._target_"], "trainer._target_ is deleted; leave trainer._target_ as the config has "
     "it (choose another trainer with trainer=OPTION)", []),
    ("train", [*TRAIN, "trainer._target_=builtins.dict"], "trainer._target_=builtins.dict is not a Lightning Trainer",
     []),
    ("train", [*TRAIN, "data._target_=abc"], "data._target_ imports a module, not a class; leave data._target_ as "
     "the config has it", []),
    ("train", [*TRAIN, "++budget.nosuch=abc"], "budget has no key nosuch; its keys are flops, tokens, minutes, "
     "max_steps", []),
    ("train", [*TRAIN, "data._target_=${{model}}"], "data._target_ is a DictConfig, not a class's name", []),
    ("train", [*TRAIN, "data.batch_size=${{model}}"], "data.batch_size=${{model}} puts a whole section of the config "
     "where a value goes; set data.batch_size=VALUE", []),
    ("train", [*TRAIN, "optim._target_=lmzoo.models.lora.LoRA"], "optim._target_=lmzoo.models.lora.LoRA cannot build "
     "optim (its class takes other keys); leave optim._target_ as the config has it (choose another optim with "
     "optim=OPTION)", []),
    ("evaluate", [*EVALUATE, "~data.name", "data=hongloumeng"], "data.name is needed and the config has none; leave "
     "it as the config has it, or set data.name=VALUE", []),
    ("evaluate", [*EVALUATE, f"data.path={SHAKESPEARE}", "+data.path.nosuch=abc"],
     "data.path must be a string or null, got {{'nosuch': 'abc'}}", []),
    # An override's interpolation is read as typed, not resolved, in finding what the command line deleted.
    ("generate", ["ckpt={ckpt}", "++ckpt.nosuch=${{oops}}", "~ckpt"], "ckpt is needed, and ~ckpt deleted it", []),
    ("train", ["-m", *TRAIN, "hydra.sweep.dir={tmp}/sweep_cfg", "--cfg", "job"], "-m and --cfg job cannot be given "
     "together", ["sweep_cfg"]),
    ("train", ["-m", *TRAIN, "hydra/launcher=slurm", "hydra.sweep.dir={tmp}/sweep_slurm"], "hydra/launcher=slurm cannot "
     "start the sweep", ["sweep_slurm/multirun.yaml"]),
    ("train", [*TRAIN, "model.target_params=-1"], "model.target_params must be positive or null, got -1", []),
    ("train", [*BASE, "model=bigram", "model.target_params=1e5"], "model.target_params does not apply to BigramConfig: "
     "it has no width to size", []),
    ("train", [*TRAIN, "optim.name=sgd"], "optim.name must be one of adamw, muon, got 'sgd'", []),
    ("train", [*TRAIN, "optim=muon", "optim.muon_momentum=1"], "optim.muon_momentum within [0, 1)", []),
    ("train", [*TRAIN, "trainer.skip_nonfinite=maybe"], "trainer.skip_nonfinite must be true or false, got 'maybe'", []),
    ("train", [*TRAIN, "trainer.precision=fp8"], "Lightning refuses the trainer settings: Precision 'fp8' is invalid",
     []),
    ("train", [*TRAIN, "trainer.devices=0"], "Lightning refuses the trainer settings: `Trainer(devices=0)`", []),
    # A budget counts the devices before the Trainer is built, as Lightning does.
    ("train", [*TRAIN, "budget.tokens=1e6", "trainer.devices=0"], "Lightning refuses the trainer settings: "
     "`Trainer(devices=0)`", []),
    pytest.param("train", [*TRAIN, "trainer.accelerator=gpu"], "trainer.accelerator=gpu needs a CUDA GPU", [],
                 marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is here"), id="train:trainer.accelerator=gpu"),
    ("train", [*TRAIN, "callbacks.early_stopping.patience=abc"], "callbacks.early_stopping.patience must be an integer "
     ">= 0", []),
    # The fused AdamW computes its update in float32 and survives fp16 weights; the foreach one divides by an eps
    # that fp16 rounds to 0. Found at the first step, in a run that started: in a folder of its own.
    ("train", [*TRAIN, "hydra.run.dir={tmp}/fp16_run", "trainer.precision=16-true", "optim.fused=false"],
     "trainer.precision=16-true has no loss scaling and overflows", []),
    # train: the data
    ("train", [*TRAIN, "data.batch_size=-1"], "data.batch_size must be positive", []),
    ("train", [*TRAIN, "data.val_batches=0"], "data.val_batches must be positive, got 0", []),
    ("train", [*TRAIN, "data.num_workers=-1"], "data.num_workers must be >= 0", []),
    ("train", [*TRAIN, "data.prepare_workers=-3"], "data.prepare_workers must be positive or null", []),
    ("train", [*TRAIN, "data.prepare_workers=0"], "data.prepare_workers must be positive or null", []),
    ("train", [*TRAIN, "data.train_fraction=1.5"], "data.train_fraction must lie strictly between 0 and 1", []),
    ("train", [*TRAIN, "data.dtype=float7"], "data.dtype must be uint16, uint32 or null", []),
    ("train", [*TRAIN, "data.tokenizer=cl100k_base"], "data.tokenizer=cl100k_base does not pick a tokenizer; pass "
     "tokenizer=cl100k_base", []),
    ("train", [*TRAIN, "data.tokenizer.vocab_size=abc"], "data.tokenizer.vocab_size must be an integer", []),
    ("train", [*TRAIN, "tokenizer=bpe", "data.tokenizer.vocab_size=abc"], "data.tokenizer.vocab_size must be an integer",
     []),
    ("train", [*TRAIN, "data.tokenizer.kind=wordpiece"], "data.tokenizer.kind must be one of char, tiktoken, bpe", []),
    ("train", [*TRAIN, "data.path={tmp}/nothing.txt"], "data file '{tmp}/nothing.txt' does not exist", []),
    ("train", [*TRAIN, "data.path=/dev/null"], "data file '/dev/null' is not a regular file", []),
    ("train", [*TRAIN, "--cfg"], "argument --cfg/-c: expected one argument; see python -m lmzoo.train --help", []),
    ("train", [*TRAIN, "--cfg", "everything"], "argument --cfg/-c: invalid choice: 'everything'", []),
    ("train", [*TRAIN, "model"], "'model' is not an override: write KEY=VALUE, such as model=gpt_rope", []),
    pytest.param("train", [*TRAIN, "trainer=fsdp"], "trainer=fsdp shards a model over CUDA GPUs, and torch sees none; "
                 "train without trainer=fsdp", [], marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is here"),
                 id="train:trainer=fsdp"),
    ("train", [*TRAIN, "paths.data_dir={tmp}/baddata"], "holds token id 65535, outside the vocabulary of 65", []),
    ("train", [*TRAIN, "paths.data_dir={tmp}/editeddata"], "{tmp}/editeddata/shakespeare_char/char/train.bin has changed "
     "since it was prepared (its sha256 is not the one in meta.json); delete", []),
    ("train", [*TRAIN, "paths.data_dir={tmp}/afile.txt"], "cannot use {tmp}/afile.txt/shakespeare_char/char as a folder",
     []),
    ("train", [*TRAIN, "paths.data_dir={unwritable}/data"], "cannot use {unwritable}/data/shakespeare_char/char as a "
     "folder", []),
    # train: the run folder and resuming
    ("train", [*TRAIN, "hydra.run.dir={tmp}/afile.txt"], "cannot use {tmp}/afile.txt as a folder (File exists); "
     "choose another folder with hydra.run.dir=PATH", []),
    ("train", [*TRAIN, "hydra.run.dir={unwritable}/run"], "cannot use {unwritable}/run as a folder", []),
    # A folder that holds a run is only continued, never written over (tests/test_training.py: resume=auto).
    ("train", [*TRAIN, "hydra.run.dir={tmp}/trained/run"], "{tmp}/trained/run already holds a run "
     "({tmp}/trained/run/checkpoints/best.ckpt); continue it with resume=auto, or start a new run in another folder "
     "with hydra.run.dir=PATH", ["trained/run/checkpoints/best-v1.ckpt"]),
    ("train", [*TRAIN, "hydra.run.dir={tmp}/trained/run", "ckpt_path={ckpt}"], "{tmp}/trained/run already holds a run",
     []),
    ("train", ["-m", *TRAIN, "hydra.sweep.dir={tmp}/sweep_done"], "{tmp}/sweep_done already holds a sweep "
     "({tmp}/sweep_done/multirun.yaml); continue it with the same command and resume=auto, or choose a new folder "
     "with hydra.sweep.dir=PATH", []),
    ("train", ["-m", *TRAIN, "resume=auto", "hydra.sweep.dir={tmp}/sweep_done"], "{tmp}/sweep_done holds a sweep of "
     "other overrides (model=mlp,bigram seed=1); continue it with those and resume=auto", []),
    # Refused after Hydra composed the command, before anything of it is written: the folder keeps its own record
    # of the run (.hydra/, provenance.json, summary.json, checkpoints), byte for byte.
    ("train", [*TRAIN, "hydra.run.dir={tmp}/trained/run", "resume=auto", "model=mla"],
     "{tmp}/trained/run/checkpoints/last.ckpt holds a model=gpt_rope model, not what model= builds", []),
    ("train", [*TRAIN, "hydra.run.dir={tmp}/diverged_run", "resume=auto", "optim.lr=1e-3"],
     "{tmp}/diverged_run/checkpoints/last.ckpt holds non-finite weights (NaN or inf in "
     "model.transformer.h.0.attn.c_attn.weight): the run diverged; train again in a new folder (hydra.run.dir=PATH) "
     "with a lower optim.lr, or start one from the finite weights of {tmp}/diverged_run/checkpoints/best.ckpt with "
     "init_from={tmp}/diverged_run/checkpoints/best.ckpt", []),
    # A launcher that refuses its settings leaves no multirun.yaml to block the corrected command, and one there
    # before as it was.
    ("train", ["-m", *TRAIN, "hydra/launcher=parallel", "hydra.launcher.n_jobs=0", "hydra.sweep.dir={tmp}/sweep_jobs0"],
     "hydra/launcher=parallel cannot start the sweep (ValueError: n_jobs == 0 in Parallel has no meaning); fix "
     "hydra.launcher.*", ["sweep_jobs0/multirun.yaml"]),
    ("train", ["-m", "model=mlp,bigram", "seed=1", "resume=auto", "hydra/launcher=parallel", "hydra.launcher.n_jobs=0",
               "hydra.sweep.dir={tmp}/sweep_done"], "hydra/launcher=parallel cannot start the sweep", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/missing.ckpt"], "checkpoint '{tmp}/missing.ckpt' does not exist", []),
    # An exported folder holds weights, not the optimizer and step a run continues: a new run starts from it.
    ("train", [*TRAIN, "ckpt_path={tmp}/exported"], "ckpt_path={tmp}/exported holds a model's weights, not a training "
     "run's state to continue; start a run from them with init_from={tmp}/exported", []),
    ("train", [*TRAIN, "ckpt_path=hf:gpt2"], "start a run from them with init_from=hf:gpt2", []),
    # Every checkpoint of the run diverged: none to point at.
    ("train", [*TRAIN, "hydra.run.dir={tmp}/diverged_all", "resume=auto"], "{tmp}/diverged_all/checkpoints/last.ckpt "
     "holds non-finite weights (NaN or inf in model.transformer.h.0.attn.c_attn.weight): the run diverged, and no "
     "checkpoint of the run holds finite weights; train again in a new folder", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/trained/run"], "{tmp}/trained/run is a folder, not a checkpoint; pass one of "
     "its checkpoints, such as {tmp}/trained/run/checkpoints/best.ckpt", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/truncated.ckpt"], "not a readable checkpoint", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/old.ckpt"], "was written by lmzoo 0.0.1", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/corrupt.ckpt"], "{tmp}/corrupt.ckpt is damaged: archive/data/", []),
    ("train", [*TRAIN, "ckpt_path={tmp}/nan.ckpt"], "{tmp}/nan.ckpt holds non-finite weights", []),
    ("train", [*RESUME, "tokenizer=gpt2"], "was trained with the char tokenizer (65 symbols), but the data uses the "
     "tiktoken gpt2", []),
    ("train", [*RESUME, "model.n_embd=64"], "holds a model of other settings than the run builds; resume with "
     "model.n_embd=32", []),
    ("train", [*RESUME, "model=gpt"], "holds a model=gpt_rope model, not what model= builds; resume with model=gpt_rope",
     []),
    # A gpt of lmzoo 0.1, tied as gpt was before it became untied by default.
    ("train", [*BASE, "block_size=16", "model=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
               "ckpt_path={old_gpt}"], "holds a model of other settings than the run builds; resume with "
     "model.tie_embeddings=true", []),
    ("train", [*TRAIN, "init_from={tmp}/corrupt.ckpt"], "{tmp}/corrupt.ckpt is damaged", []),
    ("train", [*TRAIN, "init_from={tmp}/nan.ckpt"], "{tmp}/nan.ckpt holds non-finite weights", []),
    ("train", [*TRAIN, "init_from={tmp}/missing.ckpt"], "checkpoint '{tmp}/missing.ckpt' does not exist", []),
    ("train", [*TRAIN, "init_from={tmp}/bigram.ckpt"], "init_from={tmp}/bigram.ckpt holds another architecture than "
     "model= builds; pass model=bigram", []),
    ("train", [*TRAIN, "init_from={ckpt}", "model=gpt"], "holds another architecture than model= builds; pass "
     "model=gpt_rope", []),
    # generate
    ("generate", [], "ckpt is required; pass ckpt=...", []),
    ("generate", ["ckpt={tmp}/missing.ckpt"], "does not exist; pass a .ckpt file", []),
    ("generate", ["ckpt={tmp}/truncated.ckpt"], "it may be truncated", []),
    ("generate", ["ckpt={tmp}/old.ckpt"], "which this lmzoo 0.2.0 cannot read", []),
    ("generate", ["ckpt={tmp}/prompt.txt"], "not a readable checkpoint", []),
    ("generate", ["ckpt={tmp}/trained/run"], "is a folder, not a checkpoint; pass one of its checkpoints", []),
    ("generate", ["ckpt={tmp}/adir"], "{tmp}/adir is a folder, not a checkpoint; pass a .ckpt file", []),
    ("generate", ["ckpt={tmp}/corrupt.ckpt"], "{tmp}/corrupt.ckpt is damaged: archive/data/", []),
    ("generate", ["ckpt={tmp}/nan.ckpt"], "holds non-finite weights (NaN or inf in model.transformer.h.0.attn.c_attn.weight)", []),
    ("generate", ["ckpt={tmp}/exported"], "{tmp}/exported/model.safetensors is damaged: its sha256 is not the one "
     "recorded", []),
    ("generate", ["ckpt={tmp}/exported_no_weights"], "{tmp}/exported_no_weights has no model.safetensors beside its "
     "lmzoo.json; export the model again", []),
    ("generate", ["ckpt={tmp}/diverged.ckpt"], "{tmp}/diverged.ckpt was saved after its run diverged at step 5 "
     "(val/loss NaN or inf): its predictions are not numbers; use a checkpoint saved before", []),
    ("generate", ["ckpt=/dev/null"], "checkpoint '/dev/null' is not a regular file", []),
    ("generate", ["ckpt={tmp}/unknown_architecture.ckpt"], "the checkpoint's architecture 'lmzoo.models.nonesuch.Config' "
     "is not one of lmzoo", []),
    ("generate", ["ckpt={tmp}/missing_weight.ckpt"], "{tmp}/missing_weight.ckpt's weights do not fit its recorded "
     "architecture (Missing key(s) in state_dict: \"transformer.wte.weight\"", []),
    ("generate", ["ckpt={ckpt}", "prompt=@/dev/null"], "prompt file '/dev/null' is not a regular file", []),
    ("generate", ["ckpt=hf:gpt2"], "could not fetch 'gpt2' from the Hugging Face Hub", []),
    ("generate", ["ckpt={ckpt}", "tmperature=1"], "the config has no key tmperature (did you mean temperature?)", []),
    ("generate", ["ckpt={ckpt}", "top_k=0"], "top_k must be a positive integer or null, got 0", []),
    ("generate", ["ckpt={ckpt}", "top_p=0"], "top_p must lie in (0, 1] or be null, got 0", []),
    ("generate", ["ckpt={ckpt}", "top_p=1.5"], "top_p must lie in (0, 1] or be null, got 1.5", []),
    ("generate", ["ckpt={ckpt}", "temperature=-0.5"], "temperature must be >= 0 and finite (0 decodes greedily), got -0.5",
     []),
    ("generate", ["ckpt={ckpt}", "temperature=abc"], "temperature must be a number, got 'abc'", []),
    # inf would sample uniformly, NaN make every prediction NaN: neither is the checkpoint's fault.
    ("generate", ["ckpt={ckpt}", "temperature=inf"], "temperature must be >= 0 and finite (0 decodes greedily), got inf",
     []),
    ("generate", ["ckpt={ckpt}", "temperature=nan"], "temperature must be >= 0 and finite", []),
    ("generate", ["ckpt={ckpt}", "repetition_penalty=inf"], "repetition_penalty must be > 0 and finite", []),
    ("generate", ["ckpt={ckpt}", "repetition_penalty=nan"], "repetition_penalty must be > 0 and finite", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=100000000000"], "1 sample(s) of 100,000,000,001 tokens need 800 GB, "
     "more than this machine's", []),
    ("generate", ["ckpt={ckpt}", "num_samples=100000000000"], "100,000,000,000 sample(s) of 501 tokens need "
     "400,800 GB, more than this machine's", []),
    ("generate", ["ckpt={ckpt}", "repetition_penalty=0"], "repetition_penalty must be > 0", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=-1"], "max_new_tokens must be >= 0", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=abc"], "max_new_tokens must be an integer, got 'abc'", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=2.5"], "max_new_tokens must be an integer, got 2.5", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=1e12"], "max_new_tokens must be an integer", []),
    ("generate", ["ckpt={ckpt}", "kv_cache=maybe"], "kv_cache must be true or false, got 'maybe'", []),
    ("generate", ["ckpt={ckpt}", "stop_at_eot=maybe"], "stop_at_eot must be true or false", []),
    ("generate", ["ckpt={ckpt}", "stop=[1,2]"], "stop must be a string or a list of strings, got [1, 2]", []),
    ("generate", ["ckpt={ckpt}", "seed=1e20"], "seed must be an integer", []),
    ("generate", ["ckpt={ckpt}", "seed=-1"], "seed must lie in [0, 2**63), got -1", []),
    ("generate", ["ckpt={ckpt}", "num_samples=0"], "num_samples must be >= 1, got 0", []),
    ("generate", ["ckpt={ckpt}", "num_samples=abc"], "num_samples must be an integer, got 'abc'", []),
    ("generate", ["ckpt={ckpt}", "prompt=[]"], "prompt=[] holds no prompt; pass prompt=''", []),
    ("generate", ["ckpt={ckpt}", "prompt=宝玉道"], "text has characters outside the char vocabulary: '宝玉道'", []),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/empty.txt"], "is empty; write a prompt into it", []),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/latin1.txt"], "is not UTF-8 (byte 3); convert it", []),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/nothing.txt"], "does not exist; pass prompt=@PATH", []),
    ("generate", ["ckpt={ckpt}", "prompt=@{tmp}/adir"], "prompt file '{tmp}/adir' is a folder; pass prompt=@PATH", []),
    ("generate", ["ckpt={ckpt}", "device=tpu9"], "device='tpu9' is not a device; use auto, cpu, cuda or cuda:N", []),
    pytest.param("generate", ["ckpt={ckpt}", "device=cuda"], "device=cuda needs a CUDA GPU, and torch sees none", [],
                 marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is here"), id="generate:device=cuda"),
    ("generate", ["ckpt={ckpt}", "out={tmp}/adir"], "out={tmp}/adir is a folder; pass a file to write", []),
    ("generate", ["ckpt={ckpt}", "max_new_tokens=2", "out={unwritable}/samples.jsonl"],
     "cannot write {unwritable}/samples.jsonl", []),
    # evaluate
    ("evaluate", [], "ckpt is required; pass ckpt=...", []),
    ("evaluate", ["ckpt={tmp}/truncated.ckpt"], "it may be truncated", []),
    ("evaluate", ["ckpt={tmp}/corrupt.ckpt"], "{tmp}/corrupt.ckpt is damaged", []),
    ("evaluate", ["ckpt={tmp}/nan.ckpt"], "holds non-finite weights", []),
    ("evaluate", ["ckpt={tmp}/trained/run"], "is a folder, not a checkpoint", []),
    ("evaluate", ["ckpt={tmp}/diverged.ckpt"], "{tmp}/diverged.ckpt was saved after its run diverged at step 5", []),
    ("evaluate", ["ckpt={tmp}/exported_no_weights"], "has no model.safetensors beside its lmzoo.json", []),
    ("evaluate", [*EVALUATE, "data=shakespeare", f"data.path={SHAKESPEARE}"], "data set 'shakespeare' is tokenized "
     "differently from the checkpoint", ["data/shakespeare"]),
    ("evaluate", [*EVALUATE, "tokenizer=gpt2"], "there is no option group tokenizer; see python -m lmzoo.evaluate --help",
     []),
    ("evaluate", EVALUATE, "no training config beside {ckpt}; name the data: data.path=FILE or data=NAME", []),
    ("evaluate", [*EVALUATE, "data=mqar"], "data=mqar has ids of a synthetic task (8192), the checkpoint char tokenizer", []),
    ("evaluate", [*EVALUATE, f"data.path={SHAKESPEARE}", "~data._target_"], "data._target_ is deleted, which evaluate "
     "reads a data set with; leave data._target_ as the config has it", []),
    ("evaluate", [*EVALUATE, f"data.path={SHAKESPEARE}", "data._target_=lmzoo.data.tokenizer.Tokenizer"],
     "data._target_=lmzoo.data.tokenizer.Tokenizer is not lmzoo.data.DataConfig", []),
    ("evaluate", [*EVALUATE, f"data.path={SHAKESPEARE}", "data._target_=abc"],
     "data._target_=abc is not lmzoo.data.DataConfig", []),
    ("evaluate", [*EVALUATE, f"data.path={SHAKESPEARE}", "data._target_=nosuch.Thing"],
     "data._target_=nosuch.Thing is not lmzoo.data.DataConfig", []),
    ("evaluate", [*EVALUATE, "batch_size=0"], "batch_size must be a positive integer, got 0", []),
    ("evaluate", [*EVALUATE, "batch_size=abc"], "batch_size must be a positive integer, got 'abc'", []),
    ("evaluate", [*EVALUATE, "device=tpu9"], "device='tpu9' is not a device", []),
    ("evaluate", [*EVALUATE, "data.path={tmp}/nothing.txt"], "data file '{tmp}/nothing.txt' does not exist", []),
    ("evaluate", [*EVALUATE, "data.path={tmp}/latin1.txt"], "{tmp}/latin1.txt is not UTF-8 text (bad byte at offset 3)",
     []),
    # evaluate reads windows of the model's context, which it cannot change: a text too short for it needs more text.
    ("evaluate", [*EVALUATE, "data.path={tmp}/prompt.txt"], "block_size 32 is larger than the train split (4 tokens); "
     "evaluate on a longer text", []),
    ("evaluate", [*EVALUATE, "data.path={tmp}/greek.txt"], "text has characters outside the char vocabulary", []),
    ("evaluate", [*EVALUATE, "data.path={tmp}/chinese.txt"], "' and 160 more; use only characters that occur", []),
    ("evaluate", ["ckpt={tmp}/badrun/checkpoints/last.ckpt", "paths.data_dir={tmp}/data"], "{tmp}/badrun/.hydra/config.yaml "
     "does not parse (", []),
    ("evaluate", ["ckpt={unwritable}/last.ckpt", "paths.data_dir={tmp}/data", f"data.path={SHAKESPEARE}"],
     "cannot write {unwritable}/last.eval.tinyshakespeare.json", []),
    # describe
    ("describe", [], "ckpt is required; pass ckpt=...", []),
    ("describe", ["ckpt={tmp}/old.ckpt"], "was written by lmzoo 0.0.1", []),
    ("describe", ["ckpt={tmp}/corrupt.ckpt"], "{tmp}/corrupt.ckpt is damaged", []),
    ("describe", ["ckpt={tmp}/trained/run"], "is a folder, not a checkpoint", []),
    ("describe", ["ckpt={tmp}/unknown_architecture.ckpt"], "architecture 'lmzoo.models.nonesuch.Config' is not one", []),
    ("describe", ["ckpt={tmp}/missing_weight.ckpt"], "weights do not fit its recorded architecture", []),
    ("describe", ["ckpt={ckpt}", "extra=1"], "the config has no key extra; its keys are ckpt", []),
    # export
    ("export", ["ckpt={ckpt}"], "out is required; pass out=...", []),
    ("export", ["ckpt={ckpt}", "out={tmp}/ckpt"], "already exists and is not an empty folder", []),
    ("export", ["ckpt={ckpt}", "out={tmp}/afile.txt"], "already exists and is not an empty folder", []),
    ("export", ["ckpt={tmp}/corrupt.ckpt", "out={tmp}/new"], "{tmp}/corrupt.ckpt is damaged", ["new"]),
    ("export", ["ckpt={tmp}/nan.ckpt", "out={tmp}/new"], "holds non-finite weights", ["new"]),
    ("export", ["ckpt={ckpt}", "out={tmp}/new", "merge=maybe"], "merge must be true or false, got 'maybe'", ["new"]),
    ("export", ["ckpt={ckpt}", "out={unwritable}/out"], "cannot write {unwritable}/out", []),
    # prepare
    ("prepare", [*PREPARE, "data.path={tmp}/empty.txt"], "is empty; point data.path at a file", []),
    ("prepare", [*PREPARE, "data.path={tmp}/newlines.txt"], "newlines.txt holds only whitespace; point data.path at a file",
     []),
    ("prepare", [*PREPARE, "data.path={tmp}/latin1.txt"], "is not UTF-8 text (bad byte at offset 3)", []),
    ("prepare", [*PREPARE, "data.path={tmp}/adir"], "folder '{tmp}/adir' holds no .txt files", []),
    ("prepare", [*PREPARE, "data.path={tmp}/*.nomatch"], "matches no file; check the pattern", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "data.val_path={tmp}/nothing.txt"],
     "data file '{tmp}/nothing.txt' does not exist; point data.val_path", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "data.dtype=float7"], "data.dtype must be uint16, uint32 or null",
     []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "data.tokenizer=cl100k_base"], "pass tokenizer=cl100k_base", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "tokenizer=cl100k_base", "data.dtype=uint16"],
     "a vocabulary of 100,277 tokens does not fit uint16", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "tokenizer=bpe", "data.tokenizer.vocab_size=100"],
     "tokenizer.vocab_size 100 is too small", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "data.tokenizer.name=gpt9", "data=shakespeare"],
     "unknown tiktoken encoding 'gpt9'", []),
    ("prepare", ["paths.data_dir={tmp}/afile.txt", f"data.path={SHAKESPEARE}"], "cannot use {tmp}/afile.txt/", []),
    ("prepare", [*PREPARE, f"data.path={SHAKESPEARE}", "data=nosuch"], "data=nosuch is not an option", []),
    # plot
    ("plot", [], "the following arguments are required: RUN_OR_SWEEP_DIR; usage: python -m lmzoo.plot", []),
    ("plot", ["{tmp}/trained/run", "--out", "{tmp}/loss.xyz"], "cannot write a .xyz image; end the name with one of", []),
    ("plot", ["{tmp}/trained/run", "--out", "{tmp}/adir"], "--out {tmp}/adir is a folder; pass an image file", []),
    ("plot", ["{tmp}/trained/run", "--out", "{unwritable}/loss.png"], "cannot write {unwritable}/loss.png", []),
    ("plot", ["{tmp}/nothing"], "'{tmp}/nothing' is not a folder", []),
    ("plot", ["{tmp}/adir"], "no TensorBoard logs under", []),
    ("plot", ["{tmp}/tb_empty"], "the TensorBoard event files of tb_empty hold no scalars (the run logged none, or "
     "they are empty or damaged)", []),
    ("plot", ["{tmp}/tb_garbage", "--x", "tokens"], "the TensorBoard event files of tb_garbage hold no scalars", []),
    ("plot", ["{tmp}/trained/run", "--bogus"], "unrecognized arguments: --bogus", []),
    # compare
    ("compare", [], "the following arguments are required: SWEEP_DIR; usage: python -m lmzoo.compare", []),
    ("compare", ["{tmp}/sweep_json", "{tmp}/sweep_json/"], "{tmp}/sweep_json is given more than once; pass each "
     "sweep folder once", []),
    ("compare", ["{tmp}/trained", "--out", "{tmp}/truncated.ckpt/study"], "cannot write "
     "{tmp}/truncated.ckpt/study/comparison.md (Not a directory); choose a writable folder with --out DIR", []),
    ("compare", ["{tmp}/sweep_json", "{tmp}/sweep_list", "--out", "{tmp}/trained/run"], "--out {tmp}/trained/run "
     "holds a sweep or a run ({tmp}/trained/run/summary.json), whose tables describe its own runs; pass a new folder",
     []),
    ("compare", ["{tmp}/nothing"], "'{tmp}/nothing' is not a folder", []),
    ("compare", ["{tmp}/adir"], "no runs in {tmp}/adir", []),
    ("compare", ["{tmp}/trained/run"], "{tmp}/trained/run is one run's folder, not a sweep's; pass the folder that "
     "holds its runs, such as {tmp}/trained", ["trained/run/comparison.md"]),
    ("compare", ["{tmp}/sweep_json"], "{tmp}/sweep_json/0_a/summary.json is not valid JSON", []),
    ("compare", ["{tmp}/sweep_list"], "{tmp}/sweep_list/0_a/summary.json holds list, not a run's summary", []),
    ("compare", ["{tmp}/sweep_type"], "{tmp}/sweep_type/0_a/summary.json has a steps of 'x'", []),
    ("compare", ["{tmp}/sweep_model"], "{tmp}/sweep_model/0_a/summary.json has a model of 5, which is not text", []),
    ("compare", ["{tmp}/sweep_provenance"], "{tmp}/sweep_provenance/0_a/provenance.json is not the provenance.json", []),
    # plot against tokens, FLOPs or time
    ("plot", ["{tmp}/trained/run", "--x", "watts"], "argument --x: invalid choice: 'watts'", []),
    ("plot", ["{tmp}/trained/run", "--y", "perplexity"], "argument --y: invalid choice: 'perplexity'", []),
    ("plot", ["{tmp}/old_run", "--x", "flops"], "--x flops: no run records its FLOPs per token", []),
    # scaling
    ("scaling", [], "the following arguments are required: SWEEP_DIR; usage: python -m lmzoo.scaling", []),
    ("scaling", ["{tmp}/nothing"], "'{tmp}/nothing' is not a folder", []),
    ("scaling", ["{tmp}/adir"], "no runs in {tmp}/adir", []),
    ("scaling", ["{tmp}/trained/run"], "{tmp}/trained/run is one run's folder, not a sweep's", []),
    ("scaling", ["{tmp}/sweep_failed"], "no finished run in {tmp}/sweep_failed has a best val/loss", []),
    ("scaling", ["{tmp}/scaling_two_sizes"], "gpt_rope: budget 1e+14 FLOPs has 2 size(s) (100000, 200000); the IsoFLOP "
     "parabola needs at least 3", ["scaling_two_sizes/scaling.png"]),
    ("scaling", ["{tmp}/scaling_no_budget"], "has no budget.flops; scaling reads a sweep over sizes and budgets", []),
    ("scaling", ["{tmp}/scaling_concave"], "at budget 1e+14 FLOPs the loss does not curve upwards in log N", []),
    ("scaling", ["{tmp}/scaling_two_sizes", "--out", "{tmp}/s.xyz"], "cannot write a .xyz image", []),
]


def corrupt_a_tensor(source, target):
    """A copy of the checkpoint `source` with bytes of its first tensor overwritten, as a bad disk would."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        member = next(info for info in archive.infolist() if "/data/" in info.filename)
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    data[start: start + 64] = b"\xff" * 64
    target.write_bytes(data)


@contextlib.contextmanager
def unwritable_folder(folder):
    """`folder`, made a folder no file can be created in, even by root (chmod for a user, the immutable flag
    for root); None where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        yield None


def make_studies(tmp):
    """Tune folders holding a study of bigram with one trial of optim.lr in [1e-4, 3e-2] (as an earlier release
    left it, its search recorded only by its trial): in its folder, in the folder an earlier lmzoo named after its
    job, damaged and truncated."""
    for path in (tmp / "tune_other" / "model-bigram", tmp / "tune_earlier" / "0_model-bigram"):
        path.mkdir(parents=True)
        study = optuna.create_study(study_name="bigram", storage=f"sqlite:///{path / 'study.db'}")
        study.optimize(lambda trial: trial.suggest_float("optim.lr", 1e-4, 3e-2, log=True), n_trials=1)
    (tmp / "tune_earlier" / "0_model-bigram" / ".hydra").mkdir()
    (tmp / "tune_earlier" / "0_model-bigram" / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      model: bigram\n")
    data = (tmp / "tune_other" / "model-bigram" / "study.db").read_bytes()
    for name, damaged in (("tune_garbage", b"not a database " * 100), ("tune_truncated", data[: len(data) // 2])):
        (tmp / name / "model-bigram").mkdir(parents=True)
        (tmp / name / "model-bigram" / "study.db").write_bytes(damaged)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Bad and good files the cases point at, a checkpoint trained for 10 steps, and the data it trained on."""
    tmp = tmp_path_factory.mktemp("bad_input")
    trained = tmp / "trained" / "run"
    train(compose_train(tmp / "trained", "trainer.max_steps=10", "trainer.val_check_interval=10"))
    (trained / ".hydra").mkdir()
    (trained / ".hydra" / "config.yaml").write_text("seed: 1337\n")
    shutil.copytree(tmp / "trained" / "data", tmp / "data")
    ckpt = tmp / "ckpt" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(trained / "checkpoints" / "last.ckpt", ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    (tmp / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    corrupt_a_tensor(ckpt, tmp / "corrupt.ckpt")
    torch.save({**checkpoint, "lmzoo": {**checkpoint["lmzoo"], "version": "0.0.1"}}, tmp / "old.ckpt")
    torch.save({**checkpoint, "lmzoo": {**checkpoint["lmzoo"], "diverged_at": 5}}, tmp / "diverged.ckpt")
    torch.save({**checkpoint, "lmzoo": {**checkpoint["lmzoo"], "architecture": "lmzoo.models.nonesuch.Config"}},
               tmp / "unknown_architecture.ckpt")
    lacking = {key: value for key, value in checkpoint["state_dict"].items() if key != "model.transformer.wte.weight"}
    torch.save({**checkpoint, "state_dict": lacking}, tmp / "missing_weight.ckpt")
    bigram = BigramConfig(vocab_size=65).build()
    torch.save({**checkpoint, "lmzoo": {**checkpoint["lmzoo"], **architecture_record(bigram)},
                "state_dict": {f"model.{key}": value for key, value in bigram.state_dict().items()}}, tmp / "bigram.ckpt")
    (tmp / "badrun" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, tmp / "badrun" / "checkpoints" / "last.ckpt")
    (tmp / "badrun" / ".hydra").mkdir()
    (tmp / "badrun" / ".hydra" / "config.yaml").write_text("data: [unclosed\n")
    diverged = dict(checkpoint["state_dict"])
    diverged["model.transformer.h.0.attn.c_attn.weight"] = diverged["model.transformer.h.0.attn.c_attn.weight"] * np.nan
    torch.save({**checkpoint, "state_dict": diverged}, tmp / "nan.ckpt")
    # A run that diverged (trainer.skip_nonfinite=true lets one go on until it validates): NaN in its last.ckpt.
    shutil.copytree(trained, tmp / "diverged_run")
    torch.save({**checkpoint, "state_dict": diverged, "lmzoo": {**checkpoint["lmzoo"], "diverged_at": 10}},
               tmp / "diverged_run" / "checkpoints" / "last.ckpt")
    summary = json.loads((trained / "summary.json").read_text())
    (tmp / "diverged_run" / "summary.json").write_text(json.dumps({**summary, "status": "diverged at step 10"}))
    # One that diverged before its first validation: its best.ckpt is as non-finite as its last.ckpt.
    shutil.copytree(tmp / "diverged_run", tmp / "diverged_all")
    shutil.copy(tmp / "diverged_run" / "checkpoints" / "last.ckpt", tmp / "diverged_all" / "checkpoints" / "best.ckpt")
    export_checkpoint(str(ckpt), str(tmp / "exported"))
    shutil.copytree(tmp / "exported", tmp / "exported_no_weights")
    (tmp / "exported_no_weights" / "model.safetensors").unlink()
    weights = tmp / "exported" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x7f" * 8)
    # Bins whose meta.json fits them, but holding ids outside the vocabulary.
    shutil.copytree(tmp / "data", tmp / "baddata")
    bins = tmp / "baddata" / "shakespeare_char" / "char" / "train.bin"
    bins.write_bytes(np.full(bins.stat().st_size // 2, 65535, dtype=np.uint16).tobytes())
    # Bins edited in place: every id still in the vocabulary, but not the text they were prepared from.
    shutil.copytree(tmp / "data", tmp / "editeddata")
    bins = tmp / "editeddata" / "shakespeare_char" / "char" / "train.bin"
    bins.write_bytes(np.roll(np.fromfile(bins, dtype=np.uint16), 1).tobytes())
    (tmp / "empty.txt").write_text("")
    for run, events in (("tb_empty", b""), ("tb_garbage", bytes(range(256)) * 8)):
        (tmp / run / "tensorboard").mkdir(parents=True)
        (tmp / run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(events)
    (tmp / "newlines.txt").write_text("\n" * 5)
    (tmp / "chinese.txt").write_text("".join(chr(0x4E00 + i) for i in range(200)) * 20)
    (tmp / "latin1.txt").write_bytes("Caf\u00e9 au lait".encode("latin-1"))
    (tmp / "prompt.txt").write_text("To be")
    (tmp / "bad_tuned.yaml").write_text("gpt_rope:\n  optim.lr: [0.003\n")
    (tmp / "scalar_tuned.yaml").write_text("gpt_rope: 0.003\n")
    (tmp / "greek.txt").write_text("\u03b1\u03b2\u03b3 " * 2000)
    (tmp / "afile.txt").write_text("a file, not a folder")
    (tmp / "adir").mkdir()
    for sweep, summary in (("sweep_json", "{bad"), ("sweep_list", "[1, 2]"), ("sweep_type", json.dumps({"steps": "x"})),
                           ("sweep_model", json.dumps({"model": 5}))):
        (tmp / sweep / "0_a").mkdir(parents=True)
        (tmp / sweep / "0_a" / "summary.json").write_text(summary)
    (tmp / "sweep_provenance" / "0_a").mkdir(parents=True)
    (tmp / "sweep_provenance" / "0_a" / "provenance.json").write_text("[]")
    (tmp / "sweep_provenance" / "0_a" / "summary.json").write_text(json.dumps({"status": "done"}))
    (tmp / "sweep_done").mkdir()
    (tmp / "sweep_done" / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['model=mlp,bigram', seed=1]\n")
    (tmp / "sweep_failed" / "0_a").mkdir(parents=True)
    (tmp / "sweep_failed" / "0_a" / "summary.json").write_text(json.dumps({"status": "failed: ValueError: boom"}))
    # A run of an older release: no FLOPs per token in its summary.
    shutil.copytree(trained, tmp / "old_run")
    summary = json.loads((trained / "summary.json").read_text())
    (tmp / "old_run" / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "flops_per_token"}))
    for sweep, budget, losses in (("scaling_two_sizes", 1e14, {1e5: 2.0, 2e5: 1.9}),
                                  ("scaling_no_budget", None, {1e5: 2.0, 2e5: 1.9, 4e5: 2.0}),
                                  ("scaling_concave", 1e14, {1e5: 2.0, 2e5: 2.1, 4e5: 2.0})):
        for index, (size, loss) in enumerate(losses.items()):
            job = tmp / sweep / f"{index}_run"
            job.mkdir(parents=True)
            (job / "summary.json").write_text(json.dumps({"model": "gpt_rope", "parameters": int(size), "best_val_loss": loss}))
            config = {"seed": 1, "budget": {"flops": budget}, "model": {"target_params": size}}
            (job / "provenance.json").write_text(json.dumps({"config": config}))
    make_studies(tmp)
    # A tuned.yaml of a release that wrote no fit: a value, no neighbours.
    (tmp / "tuned_by_0.2.yaml").write_text("gpt_rope:\n  optim.lr: 0.003\n")
    (tmp / "unwritable").mkdir()
    shutil.copy(ckpt, tmp / "unwritable" / "last.ckpt")
    with unwritable_folder(tmp / "unwritable") as unwritable:
        yield tmp, unwritable


@pytest.fixture(autouse=True)
def logging_as_it_was():
    """Hydra points the root logger at the stderr of the row that ran it, which pytest closes after that row."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


def protected(tmp):
    """Every file under `tmp` with its digest: checkpoints, bins, weights, summaries, provenance, the runs' records
    of their commands (.hydra/) and sweeps' (multirun.yaml), logs. Only the lock files are left out: whoever holds
    a folder writes its PID into its .lmzoo.lock."""
    paths = [path for path in tmp.glob("**/*") if path.is_file() and path.name != LOCK]
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def run_main(entry, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"lmzoo.{entry}").main()
    return stopped.value.code


@pytest.mark.parametrize("entry, args, expected, absent", CASES,
                         ids=[f"{c[0]}:{c[1][-1] if c[1] else ''}" if isinstance(c, tuple) else None for c in CASES])
def test_bad_input_is_one_line_without_traceback(folder, monkeypatch, capsys, entry, args, expected, absent):
    tmp, unwritable = folder
    places = {"tmp": tmp, "ckpt": tmp / "ckpt" / "last.ckpt", "unwritable": unwritable,
              "old_gpt": FIXTURES / "v0.1" / "gpt.ckpt"}
    if unwritable is None and any("{unwritable}" in arg for arg in args):
        pytest.skip("no folder here that root cannot write into")
    before, run_was_there = protected(tmp), (tmp / "run").exists()
    code = run_main(entry, [arg.format(**places) for arg in args], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "Error executing job" not in err
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and expected.format(**places) in ours[0], err
    # No library's line of its own about the same mistake (Hydra's logged "Error getting class at ...").
    assert not [line for line in err.splitlines() if line.startswith("Error ")], err
    # New files may appear (the bins of data refused after preparing them); none that was there changed.
    after = protected(tmp)
    assert {path: after.get(path) for path in before} == before
    assert not [path for path in absent if (tmp / path).exists()]
    # Nor is the run folder it took left behind, empty but for its lock.
    assert run_was_there or not (tmp / "run").exists()


def test_a_target_that_names_no_class_is_one_line_as_a_command_prints_it(folder):
    """As a process, where Hydra's logging reaches stderr: its get_class logs a line of its own before it raises."""
    tmp, _ = folder
    result = subprocess.run([sys.executable, "-m", "lmzoo.evaluate", f"ckpt={tmp / 'ckpt' / 'last.ckpt'}",
                             f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp}/data", "data._target_=abc"],
                            cwd=tmp, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: data._target_=abc is not lmzoo.data.DataConfig, which evaluate reads a data set with; leave "
        "data._target_ as the config has it, and name the data with data=NAME or data.path=FILE"], result.stderr


def test_a_second_training_in_a_held_run_folder_stops_naming_the_holder(folder, monkeypatch, capsys):
    tmp, _ = folder
    run_dir = tmp / "held"
    with hold_folder(run_dir, "training in", wait=False, fix="choose another"):
        code = run_main("train", [arg.format(tmp=tmp) for arg in TRAIN] + [f"hydra.run.dir={run_dir}"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and f"error: PID {os.getpid()} is training in {run_dir}; wait for it to end" in err
    # Refused before Hydra wrote its config into the folder.
    assert not (run_dir / ".hydra").exists()
