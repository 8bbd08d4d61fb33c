"""Comparisons at equal compute: FLOPs per token, budgets, models sized to a parameter count, and Muon."""

import dataclasses
import json
import math

import pytest
import torch
from helpers import PRESETS, assert_same_weights, compose_config, compose_train, compose_zoo, make, tiny_config
from hydra.utils import instantiate

from lmzoo.checkpoints import read_checkpoint
from lmzoo.training.budget import Budget, RunLength, run_length
from lmzoo.models import TransformerConfig
from lmzoo.models.base import sized
from lmzoo.models.routing import MoE
from lmzoo.training import perf
from lmzoo.training.optim import OptimConfig, configure_optimizer
from lmzoo.training.perf import peak_flops
from lmzoo.training.run import train


def test_sparse_models_count_only_the_experts_a_token_uses():
    """Twice the experts, the same top_k: only the routers, which score every expert, cost more."""
    fewer, config = make("moe"), tiny_config("moe")
    experts = config.ffns[MoE.name].n_experts
    more = dataclasses.replace(config, ffns={MoE.name: dict(n_experts=2 * experts)})
    more_router_weights = experts * config.n_embd * config.n_layer
    assert more.build().flops_per_token(24) == fewer.flops_per_token(24) + 3 * 2 * more_router_weights


def test_gpu_peaks_come_from_the_datasheet_table_for_the_runs_precision(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert peak_flops(cuda, "bf16-mixed") == 756e12 and peak_flops(cuda, "32-true") == 51.2e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA L40S")
    assert peak_flops(cuda, "16-mixed") == 362.05e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce GTX 1080")
    assert peak_flops(cuda, "bf16-mixed") is None and peak_flops(cuda, "bf16-mixed", given=1e14) == 1e14


def test_the_cpu_probe_runs_once_per_machine_and_precision(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    probes = []
    monkeypatch.setattr(perf, "matmul_flops_per_second", lambda dtype: probes.append(dtype) or 1e9 * len(probes))
    cpu = torch.device("cpu")
    assert peak_flops(cpu, "32-true") == peak_flops(cpu, "32-true") == 1e9
    assert peak_flops(cpu, "bf16-mixed") == 2e9
    assert probes == [torch.float32, torch.bfloat16]
    assert len(json.loads((tmp_path / "lmzoo" / "peak_flops.json").read_text())) == 2


def tiny_flops_per_token() -> int:
    """compose_train's tiny gpt_rope on tinyshakespeare's 65 characters, at block_size 32."""
    return TransformerConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32).build().flops_per_token(32)


def test_the_run_length_is_a_pure_function_of_the_budget_and_the_steps_shape():
    shape = {"max_steps": 2000, "decay_steps": 2000, "val_check_interval": 250, "warmup_steps": None,
             "step_tokens": 2048, "accumulate_grad_batches": 1, "flops_per_token": 5_400_000}
    # The sweep: 2e11 FLOPs buy gpt 18 steps, with no warmup in steps to exceed.
    length = run_length(Budget(flops=2e11), **shape)
    assert (length.max_steps, length.decay_steps, length.val_check_interval) == (18, 18, 18)
    assert length.said == "budget.flops=2e+11: 18 steps of 2,048 tokens, 5,400,000 FLOPs per token"
    assert run_length(Budget(), **{**shape, "max_steps": 30, "decay_steps": 30}) == RunLength(30, 30, 30)
    assert run_length(Budget(minutes=90.5), **shape).max_time == "00:01:30:30"


def test_a_flop_budget_sets_the_steps_and_the_schedule_and_validates_at_its_end(tmp_path):
    # 4 windows of 32 tokens a step (trainer=debug): 13.5 steps' FLOPs buy 13 steps.
    budget = 13.5 * tiny_flops_per_token() * 4 * 32
    result = train(compose_train(tmp_path, f"budget.flops={budget}", "trainer.peak_flops=1e10"))
    assert result["steps"] == 13
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # The last step is not a multiple of val_check_interval (10), yet it validated and saved.
    assert last["global_step"] == 13
    assert last["lr_schedulers"][0]["lr_lambdas"][0]["decay"] == 13
    config = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]
    assert config["trainer"]["max_steps"] == config["optim"]["decay_steps"] == 13
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tokens"] == 13 * 4 * 32 and summary["flops_per_token"] == tiny_flops_per_token()
    assert summary["flops"] == summary["tokens"] * summary["flops_per_token"] <= budget
    # MFU against the peak given: the run's FLOP/s over 1e10.
    assert summary["mfu"] == pytest.approx(summary["tokens_per_sec"] * summary["flops_per_token"] / 1e10)
    assert summary["seed"] == 1337


def test_a_run_resumed_under_a_token_budget_ends_as_an_uninterrupted_one(tmp_path):
    common = ["budget.tokens=1100", "model.dropout=0.1", "optim.warmup_steps=2", "trainer.val_check_interval=4",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='step{step}'"]
    straight = tmp_path / "straight"
    train(compose_train(straight, *common))
    halfway = straight / "run" / "checkpoints" / "step4.ckpt"
    resumed = tmp_path / "resumed"
    train(compose_train(resumed, *common, f"ckpt_path={halfway}"))
    # 1100 tokens buy 8 steps of 128.
    assert_same_weights(resumed / "run" / "checkpoints" / "last.ckpt",
                        read_checkpoint(straight / "run" / "checkpoints" / "last.ckpt"))
    assert read_checkpoint(resumed / "run" / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_budget_max_steps_caps_a_cheap_models_flop_budget_and_says_what_it_spends(tmp_path, capsys):
    """bigram's 390 FLOPs a token make a transformer's budget millions of its steps; the ceiling cuts them."""
    result = train(compose_zoo(tmp_path, "bigram", "budget.flops=1e12", "budget.max_steps=6"))
    assert result["steps"] == 6
    config = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]
    assert config["trainer"]["max_steps"] == config["optim"]["decay_steps"] == 6
    # 1e12 / (390 x 128 tokens a step) = 20,032,051 steps, of which 6 are taken.
    assert "budget.flops=1e+12: 20,032,051 steps of 128 tokens, 390 FLOPs per token; cut to budget.max_steps=6, " \
           "which spend 3e-07 of the budget" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["flops"] == 6 * 128 * 390


def test_a_minutes_budget_stops_on_time_with_its_schedule_ending_there(tmp_path, capsys):
    result = train(compose_train(tmp_path, "budget.minutes=0.05", "trainer.val_check_interval=1000000"))
    assert "the budget is not exact" in capsys.readouterr().err
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # Stopped by the clock (3 s), not by trainer.max_steps, and validated at the end.
    assert 1 <= result["steps"] == last["global_step"] and result["best_val_loss"] < math.inf
    decay = last["lr_schedulers"][0]["lr_lambdas"][0]["decay"]
    assert abs(decay - result["steps"]) <= max(3, 0.25 * result["steps"])


@pytest.mark.parametrize("name", [name for name in PRESETS if tiny_config(name).width_field])
@pytest.mark.parametrize("target", [3e5, 3e6])
def test_target_params_sizes_every_architecture_within_5_percent(name, target):
    config = instantiate(compose_config("train", f"model={name}", f"model.target_params={target}").model,
                         vocab_size=65, _convert_="all")
    model = sized(config).build()
    assert model.parameter_counts().active == pytest.approx(target, rel=0.05)


def test_muon_trains_hidden_matrices_and_adamw_the_rest(tmp_path):
    model = make("moe")
    optimizer = configure_optimizer(model, OptimConfig(name="muon"), torch.device("cpu"))["optimizer"]
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in in_muon}
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.0.mlp.router.gate.weight" in names
    assert not any("wte" in name or "ln_" in name for name in names)
    assert len(in_muon) + sum(len(g["params"]) for g in adamw.param_groups) == len(list(model.parameters()))


def test_muon_lowers_the_loss_and_resumes_exactly(tmp_path):
    common = ["optim=muon", "trainer.max_steps=8", "model.dropout=0.1", "optim.warmup_steps=2",
              "trainer.val_check_interval=4", "callbacks.model_checkpoint.save_top_k=-1",
              "callbacks.model_checkpoint.filename='step{step}'"]
    straight = tmp_path / "straight"
    result = train(compose_train(straight, *common))
    assert result["best_val_loss"] < math.log(65) - 0.2
    resumed = tmp_path / "resumed"
    train(compose_train(resumed, *common, f"ckpt_path={straight / 'run' / 'checkpoints' / 'step4.ckpt'}"))
    expected = read_checkpoint(straight / "run" / "checkpoints" / "last.ckpt")
    assert_same_weights(resumed / "run" / "checkpoints" / "last.ckpt", expected)
    actual = read_checkpoint(resumed / "run" / "checkpoints" / "last.ckpt")
    assert actual["optimizer_states"][0]["optimizers"][0]["state"] and actual["lr_schedulers"] == expected["lr_schedulers"]
