"""The single-GPU path: every zoo model in every precision and compiled, the fused optimizer, the KV cache in fp32
and bf16, exact resume after kill -9, FSDP and DDP over NCCL, the peak-memory log.

Tests marked gpu need CUDA and are skipped without it; on a GPU machine run them with `python -m pytest -m gpu`.
What of this path also runs on a CPU (fp16's gradient scaler beside skip_nonfinite, compiled routing, the
optimizer choice) runs here on CPU as well.
"""

import json
import math

import pytest
import torch
from helpers import (PRESETS, SMOKE, V, assert_same_weights, compose_config, compose_train, compose_zoo, make, run,
                     tiny_overrides, train_process)
from helpers.fault_injection import fault
from helpers.recording import StepRecorder
from lightning.pytorch.plugins.precision import MixedPrecision
from torch._dynamo.utils import counters

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.cli.evaluate import evaluate_checkpoint
from lmzoo.inference.sampling import SamplingSettings, generate, sample_text
from lmzoo.reports.plot import read_scalars
from lmzoo.training.optim import OptimConfig, configure_adamw
from lmzoo.training.run import build, train

# 30 steps of a tiny model at a learning rate high enough for every zoo model's loss to fall clearly.
STEPS = ["trainer.max_steps=30", "trainer.val_check_interval=10", "data.batch_size=16", "optim.lr=3e-2"]
ON_GPU = ["trainer.accelerator=gpu"]
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]
# bf16 keeps 8 bits of mantissa: cached and uncached logits may differ by a few roundings of the largest logit.
BF16_LOGIT_TOLERANCE = 0.02


def fit(cfg):
    datamodule, lit, trainer = build(cfg)
    recorder = StepRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(lit, datamodule=datamodule)
    return lit, trainer, recorder


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", PRESETS)
def test_every_zoo_model_trains_on_cuda_with_a_falling_finite_loss(tmp_path, name, precision):
    lit, trainer, recorder = fit(compose_zoo(tmp_path, name, *STEPS, *ON_GPU, f"trainer.precision={precision}",
                                             "trainer.skip_nonfinite=true"))
    assert trainer.global_step == 30 and recorder.loss_fell()
    # A non-finite loss would have been skipped and counted; fp16 overflows in the backward are the scaler's.
    assert lit.nonfinite_skips == 0
    assert all(torch.isfinite(p).all() for p in lit.model.parameters())
    # Fused AdamW on CUDA, except under fp16's scaler with clipping (see configure_adamw).
    assert trainer.optimizers[0].defaults["fused"] == (precision != "16-mixed")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fp16_gradient_scaler_and_skip_nonfinite_each_skip_their_own_steps(tmp_path, nan_loss_at_steps, device):
    """Every step is exactly one of: an update, a NaN loss skipped by skip_nonfinite, or an overflow the scaler
    skipped (halving its scale). The scaler starts from a huge scale, so the first steps (about 7) overflow.
    Lightning runs fp16 on CUDA only; the scaler works the same on CPU, where it stands in for CUDA's."""
    nan_loss_at_steps(3, 7)
    datamodule, lit, trainer = build(compose_train(tmp_path, "trainer.max_steps=16", "trainer.val_check_interval=8",
                                                   f"trainer.accelerator={device}", "trainer.skip_nonfinite=true"))
    scaler = torch.amp.GradScaler(device, init_scale=2.0**24)
    trainer.strategy.precision_plugin = MixedPrecision("16-mixed", device, scaler)
    trainer.fit(lit, datamodule=datamodule)

    overflows = math.log2(2.0**24 / scaler.get_scale())
    updates = int(trainer.optimizers[0].state[next(lit.model.parameters())]["step"])
    assert trainer.global_step == 16 and lit.nonfinite_skips == 2
    assert overflows >= 1 and updates >= 1
    assert updates + lit.nonfinite_skips + overflows == trainer.global_step
    assert all(torch.isfinite(p).all() for p in lit.model.parameters())
    # The peak memory of a step is logged on CUDA only.
    assert ("perf/max_memory_gb" in trainer.logged_metrics) == (device == "cuda")


def test_adamw_is_fused_unless_turned_off_or_scaled_gradients_are_clipped():
    """Lightning clips between the scaler's unscale and the step, which a fused AdamW (unscaling inside its step)
    does not allow. The zoo test above trains with fp16 and clipping on CUDA."""
    model = make("gpt")
    fused = configure_adamw(model, OptimConfig(), torch.device("cuda"))["optimizer"]
    assert fused.defaults["fused"]
    unfused = configure_adamw(model, OptimConfig(), torch.device("cuda"), clips_scaled_gradients=True)["optimizer"]
    assert not unfused.defaults["fused"]
    assert configure_adamw(model, OptimConfig(), torch.device("cpu"))["optimizer"].defaults["fused"]
    assert not configure_adamw(model, OptimConfig(fused=False), torch.device("cpu"))["optimizer"].defaults["fused"]


@pytest.mark.parametrize("name, device, backend", [
    ("moa_moe", "cpu", "eager"),
    *(pytest.param(name, "cpu", "eager", marks=pytest.mark.slow) for name in PRESETS if name != "moa_moe"),
    *(pytest.param(name, "cpu", "inductor", marks=pytest.mark.slow) for name in PRESETS),
    *(pytest.param(name, "cuda", "inductor", marks=pytest.mark.gpu) for name in PRESETS)])
def test_compiled_training_settles_after_the_first_steps(tmp_path, monkeypatch, name, device, backend):
    """compile=true: the graphs are built in the first step and the first validation, and no later step builds
    more; routed layers (moe, moa_moe) do not recompile for each new count of tokens per expert. On CUDA in
    bf16 with inductor. On CPU every zoo model with inductor (slow: its C++ takes minutes on a small CPU), and
    with Dynamo's eager backend, whose guards, and so its recompilations, are inductor's: moa_moe (routed
    attention and routed FFN) in every run of the tests."""
    if backend == "eager":
        compile_module = torch.nn.Module.compile
        monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    # Past the limit Dynamo would silently leave a frame uncompiled: make that an error. Through Dynamo's own patch:
    # monkeypatching its config module lost the setting (AttributeError) in the test run after an inductor one.
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            _, trainer, recorder = fit(compose_zoo(tmp_path, name, *STEPS, "compile=true",
                                                   f"trainer.accelerator={device}", f"trainer.precision={precision}"))
    finally:
        torch._dynamo.reset()
    assert trainer.global_step == 30 and recorder.loss_fell()
    # The 11th batch's count includes the first validation's graphs (evaluation mode, no gradients).
    assert recorder.graphs[0] > 0 and recorder.graphs[-1] == recorder.graphs[10]


@pytest.mark.slow
def test_a_second_compiled_run_of_the_same_shapes_takes_its_graphs_from_pytorchs_compile_cache(tmp_path):
    """Inductor's FX graph cache (on disk, on by default) holds the compiled code: a second run builds none."""
    overrides = ["model.n_layer=1", "trainer.max_steps=2", "trainer.val_check_interval=2", "compile=true",
                 "trainer.precision=32-true"]
    for run_index in range(2):
        torch._dynamo.reset()
        counters.clear()
        try:
            fit(compose_train(tmp_path / str(run_index), *overrides))
        finally:
            torch._dynamo.reset()
    assert counters["inductor"]["fxgraph_cache_hit"] > 0 and counters["inductor"]["fxgraph_cache_miss"] == 0


def with_cache(model):
    """`model`, or a skip where it keeps no cache (it recomputes its short context)."""
    if model.new_cache() is None:
        pytest.skip(f"{type(model).__name__} keeps no cache")
    return model


def greedy(model, prompt, kv_cache: bool) -> torch.Tensor:
    settings = SamplingSettings(max_new_tokens=20, temperature=0, kv_cache=kv_cache)
    return torch.cat([prompt, torch.stack(list(generate(model, prompt, settings)), dim=1)], dim=1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PRESETS)
def test_greedy_decoding_on_cuda_with_the_cache_equals_without_in_fp32(name):
    model = with_cache(make(name)).cuda().eval()
    prompt = torch.randint(0, V, (2, 4), device="cuda")
    assert torch.equal(greedy(model, prompt, kv_cache=True), greedy(model, prompt, kv_cache=False))


def next_token_logits(model, text: torch.Tensor, start: int, kv_cache: bool) -> torch.Tensor:
    """Logits of each token of text[:, start:] as the sampler computes them: the whole prefix each time, or the
    prompt prefilled into the cache and then one token at a time."""
    with torch.no_grad():
        if not kv_cache:
            return torch.stack([model(text[:, :n]).logits[:, -1] for n in range(start, text.size(1))], dim=1)
        cache = model.new_cache()
        steps = [model(text[:, :start], cache).logits[:, -1]]
        steps += [model(text[:, n - 1 : n], cache).logits[:, -1] for n in range(start + 1, text.size(1))]
        return torch.stack(steps, dim=1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PRESETS)
def test_greedy_decoding_in_bf16_with_the_cache_keeps_to_the_uncached_path(name):
    """The first 20 tokens agree, or else the cached logits along the uncached text stay within
    BF16_LOGIT_TOLERANCE of the largest logit: where two tokens are nearly tied, bf16 rounding may pick either."""
    model = with_cache(make(name)).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(0, V, (2, 4), device="cuda")
    cached, uncached = greedy(model, prompt, kv_cache=True), greedy(model, prompt, kv_cache=False)
    if not torch.equal(cached, uncached):
        reference = next_token_logits(model, uncached, 4, kv_cache=False).float()
        difference = (next_token_logits(model, uncached, 4, kv_cache=True).float() - reference).abs().max()
        assert difference <= BF16_LOGIT_TOLERANCE * reference.abs().max(), (cached, uncached, difference)


@pytest.mark.gpu
def test_kill_9_then_resume_auto_gives_the_same_loss_curve_on_cuda(tmp_path):
    """Bit for bit under torch.use_deterministic_algorithms(True), which Lightning's trainer.deterministic sets
    (with CUBLAS_WORKSPACE_CONFIG). An operation without a deterministic CUDA kernel fails the run, naming it."""
    common = [*ON_GPU, "trainer.precision=bf16-mixed", "+trainer.deterministic=true", "trainer.max_steps=16",
              "trainer.val_check_interval=5", "model.dropout=0.1", "optim.warmup_steps=4",
              "callbacks.early_stopping.patience=100"]
    straight = train_process(tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr
    killed = train_process(tmp_path / "resumed", *common, *fault(7))
    assert killed.returncode == -9, killed.stderr
    resumed = train_process(tmp_path / "resumed", *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = (read_scalars(tmp_path / run / "run" / "tensorboard") for run in ("straight", "resumed"))
    assert actual["train/loss"] == expected["train/loss"] and len(expected["train/loss"][0]) == 16
    assert actual["val/loss"] == expected["val/loss"]
    last = "run/checkpoints/last.ckpt"
    assert_same_weights(tmp_path / "resumed" / last, read_checkpoint(tmp_path / "straight" / last))


@pytest.mark.gpu
def test_fsdp_on_one_gpu_trains_and_its_checkpoint_loads_samples_and_evaluates_on_cpu(tmp_path):
    result = train_process(tmp_path, "trainer=fsdp", "trainer.max_steps=20", "trainer.val_check_interval=10",
                           "data.batch_size=8", "data.num_workers=0", "optim.lr=1e-2", "optim.warmup_steps=2")
    assert result.returncode == 0, result.stderr
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 20
    # Weight decay still reaches the matrices: FSDP's flattened parameters must not hide their shapes from AdamW.
    decay = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert decay["weight_decay"] > 0 and decay["params"]
    model, tokenizer, _ = load_model(last, device="cpu")
    settings = SamplingSettings(max_new_tokens=20)
    text = sample_text(model, tokenizer, "ROMEO:", settings, torch.Generator().manual_seed(0))
    assert len(text) == 20
    run("lmzoo.evaluate", f"ckpt={last}", "device=cpu", cwd=tmp_path)
    (evaluation,) = last.parent.glob("last.eval.*.json")
    assert json.loads(evaluation.read_text())["loss"] < math.log(65)


@pytest.mark.gpu
def test_ddp_over_nccl_trains_in_one_process(tmp_path):
    result = train_process(tmp_path, "trainer=ddp", *ON_GPU, "trainer.devices=1", "trainer.max_steps=20",
                           "trainer.val_check_interval=10", "data.batch_size=4")
    assert result.returncode == 0, result.stderr
    assert "distributed_backend=nccl" in result.stdout + result.stderr
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 20


@pytest.mark.gpu
def test_peak_gpu_memory_of_a_step_is_logged(tmp_path):
    lit, trainer, _ = fit(compose_train(tmp_path, *ON_GPU, "trainer.max_steps=10"))
    peak = trainer.logged_metrics["perf/max_memory_gb"].item()
    # Weights, gradients and AdamW's two moments, all fp32, are held through a step; activations come on top.
    held = 4 * 4 * sum(p.numel() for p in lit.model.parameters())
    assert held / 1e9 < peak < torch.cuda.get_device_properties(0).total_memory / 1e9


@pytest.mark.parametrize("name", ["gpt_rope", "gated_deltanet"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_synthetic_task_trains_on_the_device_and_its_checkpoint_scores_alike_on_cpu(tmp_path, device, name):
    """The recall studies' path (experiment=recall's data, metrics and checkpoint choice): a tiny MQAR run on the
    device records its best val/accuracy and its test examples' accuracy, and evaluate scores that checkpoint's test
    examples on CPU as the run did on the device."""
    task = ["data=mqar", "data.vocab_size=64", "data.num_kv_pairs=4", "data.train_examples=200",
            "data.batch_size=8", "data.val_batches=2"]
    result = train(compose_config("train", f"model={name}", *SMOKE, *tiny_overrides(name), *task,
                                  "trainer.max_steps=20", "optim.lr=1e-2", "trainer.val_check_interval=10",
                                  "callbacks.model_checkpoint.monitor=val/accuracy",
                                  "callbacks.model_checkpoint.mode=max",
                                  f"paths.output_dir={tmp_path / 'run'}",
                                  f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # Below chance over the 64 ids: it has learnt at least that answers are values.
    assert summary["best_val_loss"] < math.log(64) - 0.3
    assert 0 <= summary["best_val_accuracy"] <= 1 and 0 <= summary["test_accuracy"] <= 1
    tested = evaluate_checkpoint(compose_config("evaluate", f"ckpt={result['best_checkpoint']}",
                                                "split=test", "device=cpu", "batch_size=8", *task))
    assert tested["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1 / tested["answers"])
    assert tested["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
