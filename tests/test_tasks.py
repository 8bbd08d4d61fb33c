"""Synthetic tasks as data (data=mqar, noisy_recall, selective_copying): the generators' invariants, disjoint
splits, refused settings, val/accuracy over answer positions, the summary's accuracy and state size, and a tiny
attention model that learns a tiny MQAR."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import hypothesis.strategies as st
import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO, SHAKESPEARE, compose_config
from hydra.utils import instantiate
from hypothesis import given, settings
from torch.utils.data import DataLoader

from lmzoo.checkpoints import load_model
from lmzoo.cli.evaluate import evaluate_checkpoint
from lmzoo.checkpoints.ckpt import read_checkpoint
from lmzoo.data.tasks import (IGNORE, MQARConfig, NoisyRecallConfig, SelectiveCopyingConfig, TASKS, EpochBatches,
                              task_splits)
from lmzoo.errors import UserError
from lmzoo.models.presets import preset_config
from lmzoo.training.datamodule import TaskDataModule, data_module
from lmzoo.training.module import LitLM
from lmzoo.training.optim import OptimConfig
from lmzoo.training.run import train

SMALL = dict(train_examples=300, val_batches=2, batch_size=8)
# Each task at a small setting, and its examples drawn once.
TINY_TASKS = [MQARConfig(vocab_size=64, num_kv_pairs=4, block_size=32, **SMALL),
              MQARConfig(vocab_size=64, num_kv_pairs=4, block_size=31, filler="blank", **SMALL),
              NoisyRecallConfig(block_size=40, **SMALL), NoisyRecallConfig(block_size=41, frac_noise=0.6, **SMALL),
              SelectiveCopyingConfig(block_size=40, num_tokens_to_copy=6, **SMALL)]


def mqar_answers_are_values_of_keys_queried_once(config: MQARConfig, inputs, targets):
    n = config.num_kv_pairs
    for row, target in zip(inputs, targets):
        keys, values = row[0 : 2 * n : 2], row[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < config.vocab_size // 2 <= v for k, v in zip(keys, values))
        (answered,) = np.nonzero(target != IGNORE)
        # Each key queried once, after the pairs, at an even offset from them; its answer the value it was paired with.
        assert sorted(row[answered]) == sorted(keys) and all(p >= 2 * n and (p - 2 * n) % 2 == 0 for p in answered)
        assert all(target[p] == values[list(keys).index(row[p])] for p in answered)
        if config.filler == "blank":
            assert not row[np.setdiff1d(np.arange(len(row)), [*answered, *range(2 * n)])].any()


def recall_answers_are_values_seen_with_their_key(config: NoisyRecallConfig, inputs, targets):
    signal = config.vocab_size - config.noise_vocab_size
    lead = (config.block_size + 1) % 2
    for row, target in zip(inputs, targets):
        paired = {}
        for position in range(lead, len(row), 2):
            key = row[position]
            value = row[position + 1] if position + 1 < len(row) else target[position]
            if key >= signal:
                assert value >= signal and target[position] == IGNORE
                continue
            # The answer, where the key was seen before, is the value it had (and has again).
            assert target[position] == (paired[key] if key in paired else IGNORE)
            assert paired.setdefault(key, value) == value
        # The example ends with a key seen before: the probe, always answered.
        assert target[-1] != IGNORE
        assert (target[1 - lead :: 2] == IGNORE).all()


def copies_are_the_scattered_tokens_in_order(config: SelectiveCopyingConfig, inputs, targets):
    n, blank, copy = config.num_tokens_to_copy, config.vocab_size - 2, config.vocab_size - 1
    for row, target in zip(inputs, targets):
        before = row[: len(row) - n - 1]
        assert row[len(row) - n - 1] == copy and (row[len(row) - n :] == blank).all()
        assert (target[: len(row) - n] == IGNORE).all() and list(target[len(row) - n :]) == list(before[before != blank])


INVARIANTS = {MQARConfig: mqar_answers_are_values_of_keys_queried_once,
              NoisyRecallConfig: recall_answers_are_values_seen_with_their_key,
              SelectiveCopyingConfig: copies_are_the_scattered_tokens_in_order}


@pytest.mark.parametrize("config", TINY_TASKS, ids=lambda c: f"{c.name}-{c.block_size}")
def test_every_split_keeps_its_tasks_invariants_and_the_three_are_disjoint(config):
    splits = task_splits(config)
    assert [len(splits[split][0]) for split in ("train", "val", "test")] == [300, 16, 16]
    for inputs, targets in splits.values():
        assert inputs.shape == targets.shape == (len(inputs), config.block_size)
        assert inputs.min() >= 0 and inputs.max() < config.vocab_size and targets.max() < config.vocab_size
        INVARIANTS[type(config)](config, inputs, targets)
    rows = {split: {row.tobytes() for row in inputs} for split, (inputs, _) in splits.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


@settings(max_examples=40, deadline=None)
@given(pairs=st.integers(1, 12), extra=st.integers(0, 40), vocab=st.integers(0, 200),
       power_a=st.sampled_from([0.01, 0.5, 1.0]), filler=st.sampled_from(["random", "blank"]), seed=st.integers(0, 99))
def test_mqar_keeps_zoologys_semantics_at_any_setting_it_accepts(pairs, extra, vocab, power_a, filler, seed):
    config = MQARConfig(num_kv_pairs=pairs, block_size=4 * pairs + extra, vocab_size=2 * (pairs + 1) + vocab,
                        power_a=power_a, filler=filler, seed=seed, **SMALL)
    inputs, targets = config.examples(np.random.default_rng(seed), 20)
    mqar_answers_are_values_of_keys_queried_once(config, inputs, targets)


def test_the_same_seed_gives_the_same_examples_and_another_seed_others():
    for config in TINY_TASKS:
        first, again = task_splits(config), task_splits(config)
        other = task_splits(type(config)(**{**vars(config), "seed": config.seed + 1}))
        for split in first:
            assert all(np.array_equal(a, b) for a, b in zip(first[split], again[split]))
            assert not np.array_equal(first[split][0], other[split][0])


def test_queries_come_soon_after_the_pairs_under_zoologys_power_law():
    """power_a=0.01 makes a gap of one slot about 60 times as likely as one of 64 (p ~ g^-0.99); 1 spaces the
    queries uniformly over the slots."""
    def mean_gap(power_a):
        config = MQARConfig(num_kv_pairs=1, block_size=130, vocab_size=64, power_a=power_a, **SMALL)
        _, targets = config.examples(np.random.default_rng(0), 4000)
        return (np.argmax(targets != IGNORE, axis=1) - 2).mean() / 2

    assert mean_gap(0.01) < 20 < 28 < mean_gap(1.0) < 36


def test_a_task_with_too_few_distinct_examples_for_disjoint_splits_is_refused():
    # One key, two values, one slot, blank filler: two distinct examples, both in the training set.
    config = MQARConfig(num_kv_pairs=1, block_size=4, vocab_size=4, filler="blank", train_examples=50, val_batches=1,
                        batch_size=1)
    with pytest.raises(UserError, match=r"data=mqar has too few distinct examples for 1 val examples apart from the "
                                        r"50 training ones; raise data.vocab_size or block_size"):
        task_splits(config)


@pytest.mark.parametrize("config, message", [
    (dict(data="mqar", num_kv_pairs=40, block_size=128),
     "block_size 128 is too short for data.num_kv_pairs=40: the pairs and the queries take at least 4 x 40 = 160 tokens"),
    (dict(data="mqar", num_kv_pairs=8, vocab_size=17, block_size=64),
     "data.vocab_size 17 is too small for data.num_kv_pairs=8: 8 distinct keys from its lower half (without the "
     "blank) and values from its upper half take at least 2 x (8 + 1) = 18 tokens"),
    (dict(data="selective_copying", num_tokens_to_copy=16, block_size=33),
     "block_size 33 is too short for data.num_tokens_to_copy=16"),
    (dict(data="noisy_recall", vocab_size=17, noise_vocab_size=16),
     "data.vocab_size 17 leaves no keys and values beside data.noise_vocab_size=16: it must be at least 18"),
])
def test_settings_that_cannot_make_an_example_are_refused_naming_the_limit(config, message):
    data = TASKS[config.pop("data")]
    with pytest.raises(UserError, match=re.escape(message)):
        data(**config)


def test_training_batches_read_the_set_in_epochs_and_restart_at_any_step():
    inputs, targets = np.arange(10)[:, None].repeat(3, axis=1), np.zeros((10, 3), dtype=np.int64)
    stream = iter(EpochBatches(inputs, targets, 4, seed=1))
    seen = torch.cat([next(stream)[0][:, 0] for _ in range(5)]).tolist()
    # Each epoch every example once; a resumed stream (start=3) gives the batches from step 3 on.
    assert sorted(seen[:10]) == sorted(seen[10:20]) == list(range(10)) and seen[:10] != seen[10:20]
    assert next(iter(EpochBatches(inputs, targets, 4, seed=1, start=3)))[0][:, 0].tolist() == seen[12:16]
    # Two ranks share the global batch of each step.
    ranks = [next(iter(EpochBatches(inputs, targets, 2, seed=1, rank=r, world_size=2)))[0][:, 0] for r in (0, 1)]
    assert torch.cat(ranks).tolist() == seen[:4]


def test_val_accuracy_is_the_share_of_answers_predicted_exactly_over_the_whole_validation_set():
    """A bigram whose table predicts each input token: batch A answers 1 of 1, batch B 1 of 3. Accuracy over the
    answers is 2 / 4 = 0.5; the mean of the batches' accuracies would be 2 / 3."""
    model = preset_config("bigram", vocab_size=10).build()
    with torch.no_grad():
        model.logits.weight.copy_(10 * torch.eye(10))
    batch_a = (torch.tensor([[1, 2, 3]]), torch.tensor([[IGNORE, 2, IGNORE]]))
    batch_b = (torch.tensor([[4, 5, 6], [7, 8, 9]]), torch.tensor([[4, IGNORE, 0], [IGNORE, 1, IGNORE]]))
    lit = LitLM(model, OptimConfig(), {"kind": "ids", "vocab_size": 10}, scores_answers=True)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(lit, DataLoader([batch_a, batch_b], batch_size=None), verbose=False)
    assert trainer.callback_metrics["val/accuracy"].item() == pytest.approx(0.5)
    assert lit.best_val_accuracy == pytest.approx(0.5)


def test_test_accuracy_is_the_share_of_answers_predicted_exactly_over_the_whole_test_set():
    """The bigram that predicts each input token, on test examples in batches of 2: the first answers 2 of 3, the
    second 0 of 1. Over the answers: 2 / 4, where the mean of the batches' accuracies would be 1 / 3."""
    model = preset_config("bigram", vocab_size=10).build()
    with torch.no_grad():
        model.logits.weight.copy_(10 * torch.eye(10))
    data = TaskDataModule(SimpleNamespace(batch_size=2))
    data.splits = {"test": (np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
                            np.array([[IGNORE, 2, IGNORE], [4, IGNORE, 0], [IGNORE, 1, IGNORE]]))}
    result = data.test_result(model)
    assert result["test_accuracy"] == pytest.approx(0.5) and math.isfinite(result["test_loss"])
    assert model.training


def compose_task(tmp_path, *overrides):
    return compose_config("train", "data=mqar", "trainer=debug", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "sample_tokens=0", "model.n_layer=2", "model.n_head=2",
                          "model.n_embd=32", "model.ffn_pattern=[]", f"paths.output_dir={tmp_path}", *overrides)


def test_a_task_run_records_its_accuracy_and_state_size_and_resumes_with_its_best_accuracy(tmp_path):
    common = ["data.vocab_size=64", "data.num_kv_pairs=4", "block_size=32", "data.train_examples=200",
              "trainer.max_steps=8", "trainer.val_check_interval=4", "callbacks.model_checkpoint.save_top_k=-1",
              "callbacks.model_checkpoint.filename='step{step}'"]
    result = train(compose_task(tmp_path / "straight", *common))
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["best_val_accuracy"] == result["best_val_accuracy"] and 0 <= summary["best_val_accuracy"] <= 1
    assert summary["best_val_bpb"] is None and summary["test_bpb"] is None
    # The test examples', of the best-validation checkpoint, once at the end.
    data = data_module(instantiate(compose_task(tmp_path / "straight", *common).data, _convert_="all"))
    data.prepare_data()
    assert 0 <= summary["test_accuracy"] <= 1 and {key: summary[key] for key in ("test_loss", "test_accuracy")} == \
        data.test_result(load_model(result["best_checkpoint"])[0])
    # evaluate scores the same test examples, or the validation set, on their answers.
    run_data = compose_task(tmp_path / "straight", *common).data
    task = ["data=mqar", "data.vocab_size=64", "data.num_kv_pairs=4", "data.train_examples=200",
            f"data.batch_size={run_data.batch_size}", f"data.val_batches={run_data.val_batches}"]
    best = result["best_checkpoint"]
    # In batches of the run's size, so that the sums are rounded alike.
    tested = evaluate_checkpoint(compose_config("evaluate", f"ckpt={best}", "split=test", *task,
                                                f"batch_size={run_data.batch_size}"))
    assert (tested["loss"], tested["accuracy"]) == (summary["test_loss"], summary["test_accuracy"])
    assert json.loads(Path(best).with_name(f"{Path(best).stem}.eval.mqar.test.json").read_text()) == tested
    validated = evaluate_checkpoint(compose_config("evaluate", f"ckpt={best}", *task))
    assert validated["answers"] == tested["answers"] and validated["loss"] != tested["loss"]
    with pytest.raises(UserError, match="data=mqar has ids of a synthetic task .128., the checkpoint ids of a "
                                        "synthetic task .64."):
        evaluate_checkpoint(compose_config("evaluate", f"ckpt={best}", *task, "data.vocab_size=128"))
    # Two layers of keys and values, 32 tokens, 32 wide, in fp32.
    assert summary["state_bytes"] == 2 * 2 * 32 * 32 * 4
    halfway = tmp_path / "straight" / "checkpoints" / "step4.ckpt"
    assert read_checkpoint(halfway)["lmzoo"]["best_val_accuracy"] is not None
    train(compose_task(tmp_path / "resumed", *common, f"ckpt_path={halfway}"))
    expected = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    actual = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["best_val_accuracy"] == \
        summary["best_val_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_tiny_attention_model_learns_a_tiny_mqar(tmp_path, seed):
    """Two layers of attention, the first local (swa, a window of 4), which forms the previous-token head the recall
    needs within a few hundred steps. Two of full attention (gpt_rope) at GPT-2's init (std 0.02) may sit at
    1 / num_kv_pairs, choosing among the values in context, for longer than that, how long depending on the seed
    (bench/README.md, "Recall and state size")."""
    result = train(compose_task(tmp_path, "model=swa", "model.mixers.local_attention.window=4", f"seed={seed}",
                                "data.vocab_size=32", "data.num_kv_pairs=2", "block_size=16", "data.filler=blank",
                                "data.batch_size=32",
                                "data.train_examples=5000", "trainer.max_steps=600", "trainer.val_check_interval=100",
                                "optim.lr=3e-3", "optim.warmup_steps=20"))
    assert result["best_val_accuracy"] > 0.95



def test_a_tune_can_check_and_rank_its_trials_by_highest_accuracy(tmp_path):
    from lmzoo.reports.tune import read_trials, write_tune_report
    from lmzoo.training.choice import best_trial, choose
    from lmzoo.training.search import TuneSettings
    from lmzoo.training.tune import tune_model

    folder = tmp_path / "tune"
    folder.mkdir()
    cfg = compose_config("tune", "data=mqar", "data.vocab_size=32", "data.num_kv_pairs=2", "block_size=16",
                         "data.train_examples=100", "data.batch_size=4", "data.val_batches=2", "model=bigram",
                         "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.enable_progress_bar=false",
                         "trainer.enable_model_summary=false", f"paths.output_dir={folder}")
    # Checked at each quarter, never pruned (prune_after beyond the trials): every check is an accuracy, not a loss.
    settings = TuneSettings(folder=str(folder), trials=3, seed=0, search={"optim": {"lr": [1e-3, 1e-1]}},
                            prune_after=4, final_seeds=3, final=[], monitor="val/accuracy")
    study = tune_model(cfg, settings, "bigram", folder)
    assert study.direction.name == "MAXIMIZE" and all(0 <= trial.value <= 1 for trial in study.trials)
    checks = [value for trial in study.trials for value in trial.intermediate_values.values()]
    assert len(checks) == 3 * 3 and all(0 <= value <= 1 for value in checks)
    records = read_trials(folder)
    assert best_trial(records)["value"] == max(trial.value for trial in study.trials)
    # No parabola through accuracy: the best trial's values, and tune.md says why.
    choice = choose(records)
    assert choice.fit is None and choice.values == best_trial(records)["params"] and "val/accuracy" in choice.how
    (folder / ".hydra").mkdir()
    write_tune_report(tmp_path, 1, 3, [])
    best = best_trial(records)
    assert (f"Best trial: `optim.lr={best['params']['optim.lr']:.3g}`, val/accuracy {best['value']:.4f}"
            in (tmp_path / "tune.md").read_text())
    text = compose_config("tune", "model=bigram", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}",
                          f"paths.output_dir={folder}")
    with pytest.raises(UserError, match="tune.monitor=val/accuracy needs a synthetic task"):
        tune_model(text, TuneSettings(**{**vars(settings), "search": {"optim": {"lr": [1e-3, 1e-1]}}}), "bigram",
                   tmp_path)


def test_the_recall_experiment_sweeps_the_study_at_difficulties_of_zoologys_ratio():
    study = compose_config("train", "experiment=recall", return_hydra_config=True)
    params = study.hydra.sweeper.params
    # Every architecture the study has an option for, the six among them.
    models = params["experiment/recall/model@_global_"].split(",")
    options = REPO / "conf" / "experiment" / "recall" / "model"
    assert sorted(models) == sorted(path.stem for path in options.glob("*.yaml"))
    assert {"gpt_rope", "swa", "mla", "mamba2", "gated_deltanet", "hybrid"} <= set(models)
    assert len(params["model.n_embd"].split(",")) >= 3 and len(params["seed"].split(",")) >= 2
    # Seed 1 of every run before any seed 2 (the last key varies fastest): a study stopped halfway has compared
    # every architecture at every difficulty and width once.
    assert list(params)[0] == "seed" and list(params)[-1] == "optim.lr"
    # Zoology's length/pairs ratio at each difficulty; each architecture its preset, at 2 layers.
    for difficulty in params["experiment/recall/mqar@_global_"].split(","):
        cfg = compose_config("train", "experiment=recall", f"experiment/recall/mqar@_global_={difficulty}")
        assert cfg.block_size == 16 * cfg.data.num_kv_pairs
        # Each step trains on the same number of answers at every difficulty: a quarter of Zoology's 2,048.
        assert cfg.data.batch_size * cfg.data.num_kv_pairs == 512
    for model in params["experiment/recall/model@_global_"].split(","):
        cfg = compose_config("train", "experiment=recall", f"experiment/recall/model@_global_={model}",
                             return_hydra_config=True)
        assert cfg.hydra.runtime.choices.model == model and cfg.model.n_layer == 2
        # Zoology's dropout of 0.1, without which two layers of full attention rarely left the 1 / num_kv_pairs
        # plateau within the study's steps (bench/README.md).
        assert cfg.model.dropout == 0.1
        # Each builds, as the study's widths ask (its parts' knobs as this release spells them), of mixers alone.
        for width in params["model.n_embd"].split(","):
            config = instantiate(cfg.model, vocab_size=cfg.data.vocab_size, n_embd=int(width), _convert_="all")
            built = config.build()
            assert list(config.ffn_pattern) == [] and built(torch.zeros(1, cfg.block_size, dtype=torch.long)).logits \
                .shape == (1, cfg.block_size, cfg.data.vocab_size)
    hybrid = compose_config("train", "experiment=recall", "experiment/recall/model@_global_=hybrid")
    assert list(hybrid.model.layer_pattern) == ["gated_deltanet", "attention"]
    based = compose_config("train", "experiment=recall", "experiment/recall/model@_global_=conv_attention")
    assert list(based.model.layer_pattern) == ["base_conv", "attention"]


def test_the_mad_experiment_trains_the_recall_studys_models_on_mads_baseline_tasks():
    recall = compose_config("train", "experiment=recall", return_hydra_config=True)
    mad = compose_config("train", "experiment=recall_mad", return_hydra_config=True)
    params = mad.hydra.sweeper.params
    assert params["experiment/recall/model@_global_"] == recall.hydra.sweeper.params["experiment/recall/model@_global_"]
    assert mad.trainer == recall.trainer and mad.callbacks == recall.callbacks and mad.model.n_layer == 2
    assert list(params)[0] == "seed" and list(params)[-1] == "optim.lr"
    # MAD's baselines (mad-lab's configs/tasks/): noisy recall's sequences of 128 are inputs of 127 and their targets.
    baselines = {"noisy_recall": (32, 127), "selective_copying": (16, 256)}
    for task in params["experiment/recall_mad/task@_global_"].split(","):
        cfg = compose_config("train", "experiment=recall_mad", f"experiment/recall_mad/task@_global_={task}")
        assert (cfg.data.name, cfg.data.vocab_size, cfg.block_size) == (task, *baselines[task])
        assert cfg.data.train_examples == 12_800
        instantiate(cfg.data, _convert_="all")  # a valid task: impossible settings raise UserError
