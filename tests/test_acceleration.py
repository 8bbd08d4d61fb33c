"""Mixed precision with clipping and the fused AdamW, on CPU; what trainer.precision=auto and compile=auto choose
(the CPU's bf16 units faked both ways); the peak a run's MFU is measured against."""

from types import SimpleNamespace

import pytest
import torch
from helpers import compose_train, make
from helpers.recording import StepRecorder

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.training import acceleration, perf
from lmzoo.training.acceleration import CompileWhenItPays, choose_precision
from lmzoo.training.module import LitLM
from lmzoo.training.resume import resume_path
from lmzoo.training.run import build

RESUMABLE = ["trainer.max_steps=8", "optim.warmup_steps=2", "trainer.val_check_interval=4",
             "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='step{step}'"]


class GradientNorms(StepRecorder):
    """The gradients' norm as the optimizer stepped with them: read before the next step zeroes them."""

    def __init__(self):
        super().__init__()
        self.norms = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def fit(cfg):
    """As lmzoo.training.run.train fits, recording the steps."""
    datamodule, lit, trainer = build(cfg)
    recorder = GradientNorms()
    trainer.callbacks.append(recorder)
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_path(cfg), weights_only=False)
    return lit, trainer, recorder


def test_bf16_mixed_clips_with_the_fused_adamw_and_resumes_exactly_with_fp32_weights(tmp_path, capsys):
    """Lightning refuses to clip for a fused AdamW under its mixed-precision plugin; lmzoo clips itself where no
    scaler is involved. The checkpoints keep fp32 weights, so the run resumes, exports and samples as any other."""
    bf16 = ["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.05", *RESUMABLE]
    lit, trainer, recorder = fit(compose_train(tmp_path / "straight", *bf16))
    assert trainer.optimizers[0].defaults["fused"] and type(trainer.precision_plugin).__name__ == "MixedPrecision"
    # Every step's gradients were clipped to the norm asked (they start well above it).
    assert len(recorder.norms) >= 5 and all(0.049 < norm < 0.0501 for norm in recorder.norms)
    err = capsys.readouterr().err
    assert "precision: bf16-mixed (trainer.precision=bf16-mixed)" in err
    # A run this short never repays a compile.
    assert "compile: false (auto: " in err and lit.model._compiled_call_impl is None
    # MFU is measured against the CPU's bf16 matmul peak.
    assert "MFU is measured against a peak of" in err and "the fastest bf16 512x512 matmul" in err

    checkpoints = tmp_path / "straight" / "run" / "checkpoints"
    halfway = read_checkpoint(checkpoints / "step4.ckpt")
    assert halfway["global_step"] == 4
    assert all(tensor.dtype == torch.float32 for tensor in halfway["state_dict"].values() if tensor.is_floating_point())
    fit(compose_train(tmp_path / "resumed", *bf16, f"ckpt_path={checkpoints / 'step4.ckpt'}"))
    expected = read_checkpoint(checkpoints / "last.ckpt")
    actual = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert actual["global_step"] == expected["global_step"] == 8
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name

    model, tokenizer, _ = load_model(checkpoints / "last.ckpt")
    assert len(sample_text(model, tokenizer, "RO", SamplingSettings(max_new_tokens=10), torch.Generator().manual_seed(0))) > 2
    export_checkpoint(str(checkpoints / "last.ckpt"), str(tmp_path / "exported"))
    exported, _, _ = load_model(tmp_path / "exported")
    idx = torch.randint(0, 65, (1, 8))
    with torch.no_grad():
        assert torch.allclose(exported(idx).logits, model(idx).logits, atol=1e-5)


def test_the_gpu_presets_precision_clipping_and_optimizer_train_on_a_cpu(tmp_path):
    """trainer=gpu: bf16-mixed, clipping at 1.0, the fused AdamW (its torch.compile is tested apart)."""
    lit, trainer, recorder = fit(compose_train(tmp_path, "trainer=gpu", "trainer.accelerator=cpu", "compile=false",
                                               "data.batch_size=8", "data.num_workers=0", "trainer.max_steps=12",
                                               "trainer.val_check_interval=12", "optim.warmup_steps=2", "optim.lr=1e-2"))
    assert str(trainer.precision) == "bf16-mixed" and trainer.gradient_clip_val == 1.0
    assert trainer.optimizers[0].defaults["fused"]
    assert trainer.global_step == 12 and recorder.loss_fell(margin=0.1)
    assert all(norm <= 1.0 + 1e-4 for norm in recorder.norms)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One prepared data folder for the tests that only build a run."""
    return f"paths.data_dir={tmp_path_factory.mktemp('data')}"


def test_16_mixed_on_a_cpu_runs_as_bf16_mixed_and_says_so(tmp_path, capsys, data_dir):
    _, _, trainer = build(compose_train(tmp_path, data_dir, "trainer.precision=16-mixed", "trainer.accelerator=cpu"))
    assert str(trainer.precision) == "bf16-mixed" and trainer.precision_plugin.scaler is None
    assert ("precision: bf16-mixed (trainer.precision=16-mixed: fp16 autocast with a gradient scaler needs CUDA; on "
            "CPU it runs as bf16-mixed)") in capsys.readouterr().err


@pytest.fixture
def cpu_with(monkeypatch):
    """Fakes the CPU's flags."""
    def fake(*flags):
        monkeypatch.setattr(acceleration, "cpu_flags", lambda: {"avx2", *flags})
    return fake


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """Fakes the timing of a model's steps in fp32 and bf16, with nothing cached yet: measured(fp32_seconds,
    bf16_seconds); returns the list of (batch, block) the fake timed, one entry per measurement."""
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path / "cache")
    calls = []

    def fake(fp32: float, bf16: float):
        def precision_seconds(model, batch_size, block_size):
            calls.append((batch_size, block_size))
            return {"fp32": fp32, "bf16": bf16}
        monkeypatch.setattr(acceleration, "precision_seconds", precision_seconds)
        return calls
    return fake


def test_auto_precision_on_a_cpu_with_bf16_units_is_bf16_where_measured_faster_by_the_margin(cpu_with, measured):
    model = make("gpt_rope")
    cpu_with("avx512_bf16")
    measured(fp32=1.86, bf16=1.0)
    precision, reason = choose_precision("auto", "cpu", model, 4, 32)
    assert precision == "bf16-mixed"
    assert reason.startswith("auto: this CPU has avx512_bf16, and a forward and backward pass of this model on a batch "
                             "of 4 x 32 tokens took 1.86 s in fp32 and 1 s in bf16 autocast, 1.86x as fast "
                             "(measured now in ")
    # Slower in bf16, or faster by less than the margin: fp32, saying by how much.
    for batch, fp32, ratio in ((5, 0.75, "0.75x"), (6, 1.05, "1.05x")):
        measured(fp32, bf16=1.0)
        precision, reason = choose_precision("auto", "cpu", model, batch, 32)
        assert precision == "32-true" and f", {ratio} as fast (measured now in " in reason
        assert reason.endswith("below the 1.1x bf16 must gain")


def test_auto_precision_measures_each_model_shape_once_per_machine(cpu_with, measured, capsys, monkeypatch):
    cpu_with("amx_bf16")
    calls = measured(fp32=2.0, bf16=1.0)
    assert choose_precision("auto", "cpu", make("gpt_rope"), 4, 32)[0] == "bf16-mixed"
    # The same shape, other weights: cached, whatever a new measurement would say.
    measured(fp32=1.0, bf16=2.0)
    precision, reason = choose_precision("auto", "cpu", make("gpt_rope", seed=3), 4, 32)
    assert precision == "bf16-mixed" and "2.00x as fast (cached in " in reason and reason.endswith("precision.json)")
    # Another batch, another model: measured.
    assert choose_precision("auto", "cpu", make("gpt_rope"), 8, 32)[0] == "32-true"
    assert choose_precision("auto", "cpu", make("gpt"), 4, 32)[0] == "32-true"
    # At most 2,048 tokens of a batch are timed: batches of 16 and 64 sequences of 256 share the measurement of 8.
    precision, reason = choose_precision("auto", "cpu", make("gpt"), 64, 256)
    assert choose_precision("auto", "cpu", make("gpt"), 16, 256) == (precision, reason.replace("measured now", "cached"))
    assert "on a batch of 8 x 256 tokens" in reason
    assert calls == [(4, 32), (8, 32), (4, 32), (8, 256)]
    # What an lmzoo with other kernels measured is not reused: the same shape is measured again.
    monkeypatch.setattr(perf, "KERNELS", perf.KERNELS + 1)
    assert choose_precision("auto", "cpu", make("gpt_rope"), 4, 32)[1].endswith("below the 1.1x bf16 must gain")
    assert calls[-1] == (4, 32) and len(calls) == 5
    # Nor what torch's kernels measured at another instruction set (repro=true holds them at AVX2).
    capability = torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2" if capability != "AVX2" else "AVX512")
    choose_precision("auto", "cpu", make("gpt_rope"), 4, 32)
    assert len(calls) == 6


def test_auto_precision_under_repro_is_fp32_unmeasured_on_every_cpu(cpu_with, measured, monkeypatch):
    """repro=true holds the kernels at AVX2: bf16 would be emulated there, and CPUs with and without bf16 units
    would train in different precisions, the opposite of the same bits everywhere."""
    cpu_with("amx_bf16", "avx512_bf16")
    calls = measured(fp32=9.0, bf16=1.0)
    monkeypatch.setattr(acceleration, "instruction_set_held", lambda: True)
    precision, reason = choose_precision("auto", "cpu", make("gpt_rope"), 4, 32)
    assert precision == "32-true" and reason.startswith("auto: repro=true holds the kernels at AVX2") and not calls
    assert choose_precision("bf16-mixed", "cpu", make("gpt_rope"), 4, 32)[0] == "bf16-mixed"


def test_auto_precision_on_a_cpu_without_bf16_units_is_fp32_unmeasured(cpu_with, measured):
    cpu_with()
    calls = measured(fp32=9.0, bf16=1.0)
    precision, reason = choose_precision("auto", "cpu", make("gpt_rope"), 4, 32)
    assert precision == "32-true" and "no native bf16 matrix unit (amx_bf16, avx512_bf16)" in reason and not calls
    # An explicit precision wins, either way.
    cpu_with("amx_bf16")
    explicit = choose_precision("bf16-mixed", "cpu", make("gpt_rope"), 4, 32)
    assert explicit == ("bf16-mixed", "trainer.precision=bf16-mixed")
    assert choose_precision("32-true", "cpu", make("gpt_rope"), 4, 32) == ("32-true", "trainer.precision=32-true")
    # Other devices than CUDA and CPU train in fp32.
    assert choose_precision("auto", "mps", make("gpt_rope"), 4, 32)[0] == "32-true" and not calls


def test_timing_the_precisions_leaves_the_model_and_the_random_numbers_as_they_were():
    """The mlp's BatchNorm keeps running statistics that a training forward would move."""
    model = make("mlp")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = acceleration.precision_seconds(model, 2, 16)
    assert set(seconds) == {"fp32", "bf16"} and all(0 < value < 10 for value in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_probing_the_peak_flops_leaves_the_random_numbers_as_they_were(monkeypatch):
    """A run's first probe on a machine comes after its seed: drawing from torch's stream there made the same seed
    train otherwise once the probe was cached (lmzoo 0.1's pinned curves, run alone, showed it)."""
    from lmzoo.training import perf

    monkeypatch.setattr(perf, "PROBE_SECONDS", 0.01)
    rng = torch.get_rng_state()
    for dtype in (torch.float32, torch.bfloat16):
        assert perf.matmul_flops_per_second(dtype) > 0
    assert torch.equal(torch.get_rng_state(), rng)


def test_auto_precision_is_bf16_on_cuda_gpus_that_have_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: True)
    assert choose_precision("auto", "cuda", None, 4, 32) == ("bf16-mixed", "auto: the NVIDIA H100 computes in bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: False)
    assert choose_precision("auto", "cuda", None, 4, 32)[0] == "32-true"


@pytest.mark.parametrize("flags, fp32, expected", [((), 2.0, "32-true"), (("amx_bf16",), 2.0, "bf16-mixed"),
                                                   (("amx_bf16",), 0.8, "32-true")])
def test_a_run_says_which_precision_auto_chose_and_trains_in_it(tmp_path, capsys, cpu_with, measured, data_dir, flags,
                                                                fp32, expected):
    cpu_with(*flags)
    calls = measured(fp32=fp32, bf16=1.0)
    cfg = compose_train(tmp_path, data_dir, "trainer.accelerator=cpu", "model.n_layer=1")
    _, lit, trainer = build(cfg)
    assert str(trainer.precision) == expected == lit.provenance["config"]["trainer"]["precision"]
    assert f"precision: {expected} (auto: " in capsys.readouterr().err
    # The run's own batches: data.batch_size windows of block_size tokens.
    assert calls == ([(cfg.data.batch_size, cfg.block_size)] if flags else [])


def test_compile_auto_compiles_when_the_time_left_repays_it_and_a_resumed_run_follows(tmp_path, capsys, monkeypatch):
    """The choice, not the compiling (tests/test_gpu.py trains every zoo model compiled): torch.compile is
    replaced by a record of how many of the run's batches had started when it was called."""
    batches, compiled_at = [], []
    monkeypatch.setattr(LitLM, "on_train_batch_start", lambda self, batch, batch_idx: batches.append(batch_idx))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compiled_at.append(len(batches)))
    # As if compiling took no time at all and halved a step, as measured; the run's own record of its (faked)
    # compile stays in this test's cache.
    monkeypatch.setattr(acceleration, "compile_estimate", lambda shape: (0.0, 0.5, "faked"))
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path / "cache")
    fit(compose_train(tmp_path / "straight", *RESUMABLE, "trainer.max_steps=12"))
    # A first step, PACE_STEPS timed eagerly, then compiled.
    assert compiled_at == [1 + acceleration.PACE_STEPS] and "compile: true (auto: " in capsys.readouterr().err
    # The choice is in the checkpoints; a resumed run follows it from its first step, whatever its own pace says.
    checkpoint = tmp_path / "straight" / "run" / "checkpoints" / "step8.ckpt"
    (state,) = [state for key, state in read_checkpoint(checkpoint)["callbacks"].items()
                if key.startswith("CompileWhenItPays")]
    assert state == {"compiled": True}
    monkeypatch.setattr(acceleration, "compile_estimate", lambda shape: (1e9, 0.5, "faked"))
    batches.clear()
    fit(compose_train(tmp_path / "resumed", *RESUMABLE, "trainer.max_steps=12", f"ckpt_path={checkpoint}"))
    assert compiled_at[1:] == [0]
    assert "compile: true (auto: as the run this one resumes chose)" in capsys.readouterr().err


class Clock:
    """A clock the test moves, for the callback's timings."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fake_run(callback: CompileWhenItPays, model, clock: Clock, steps: list[float], max_steps: int,
             validation: list[float] = (), validate_after: int | None = None):
    """Drives `callback` through training batches of the given seconds (and one validation of batches of the
    given seconds after batch `validate_after`), as a Trainer of max_steps would, on batches of 4 x 32 tokens, to
    the end of training."""
    trainer = SimpleNamespace(global_step=0, max_steps=max_steps, callbacks=[], is_global_zero=True,
                              precision="32-true", sanity_checking=False,
                              strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    batch = (torch.zeros(4, 32), torch.zeros(4, 32))
    callback.on_train_start(trainer, module)
    for index, seconds in enumerate(steps):
        callback.on_train_batch_start(trainer, module, batch, index)
        clock.now += seconds
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, module, None, batch, index)
        if index == validate_after:
            for val_index, val_seconds in enumerate(validation):
                callback.on_validation_batch_start(trainer, module, batch, val_index)
                clock.now += val_seconds
                callback.on_validation_batch_end(trainer, module, None, batch, val_index)
            callback.on_validation_end(trainer, module)
    callback.on_train_end(trainer, module)
    return callback.shape(trainer, module, batch)


def test_a_compiled_run_records_what_compiling_cost_and_gave_and_later_runs_decide_by_it(monkeypatch, tmp_path, capsys):
    """Before any measurement, compile=auto assumes 300 s and 10%; a run that compiles measures both (its first
    compiled training step and validation batch beyond the compiled pace: the two graphs' compile), and the next
    run of the model weighs those against its time left. A model never compiled here takes the longest compile
    measured here."""
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path)
    clock = Clock()
    monkeypatch.setattr(acceleration, "time", clock)
    model = make("gpt_rope")
    compiled = []
    monkeypatch.setattr(model, "compile", lambda: compiled.append(True))
    # 1 s eager steps and 100,000 left: 10% of them repays 300 s. Compiling takes 30 s in the first compiled step
    # (then 0.5 s a step), 10 s in the first validation batch (then 0.25 s).
    eager, compiled_steps = [1.0] * (1 + acceleration.PACE_STEPS), [30.5] + [0.5] * 6
    shape = fake_run(CompileWhenItPays("auto"), model, clock, eager + compiled_steps, 100_000,
                     validation=[10.25, 0.25, 0.25], validate_after=len(eager) + 2)
    assert compiled == [True]
    assert ("compile: true (auto: 99994 s of training left at 1 s a step; not measured on this machine yet: compiling "
            "taken as 300 s without PyTorch's compile cache, saving 10% of a step; saving 9999 s here)"
            in capsys.readouterr().err)
    assert acceleration.compile_records() == {shape: acceleration.CompileRecord(first_seconds=40.0, seconds=40.0,
                                                                                compiled_step=0.5, eager_step=1.0)}
    assert acceleration.compile_estimate(shape)[:2] == (40.0, 0.5)

    # 90 steps left at 1 s save 45 s of the 40 compiling costs: compiled. 70 steps would not repay it.
    for max_steps, expected in ((96, "true"), (76, "false")):
        fake_run(CompileWhenItPays("auto"), model, clock, eager, max_steps)
        assert (f"compile: {expected} (auto: {max_steps - len(eager)} s of training left at 1 s a step; measured here "
                "for this model: compiling it 40 s (its first compile 40 s), a compiled step 0.50x an eager one; "
                f"saving {(max_steps - len(eager)) // 2} s here)") in capsys.readouterr().err
    # Another shape: the longest compile measured here, and the assumed saving.
    seconds, saves, source = acceleration.compile_estimate(shape.replace("batch 4 x 32", "batch 8 x 32"))
    assert (seconds, saves) == (40.0, 0.1) and "the longest first compile of another model measured here" in source


def test_compile_true_records_its_compile_and_keeps_the_measured_eager_pace(monkeypatch, tmp_path):
    """A second compile of the same shapes comes from PyTorch's compile cache: the record keeps the first one's
    time apart."""
    monkeypatch.setattr(perf, "cache_dir", lambda: tmp_path)
    clock = Clock()
    monkeypatch.setattr(acceleration, "time", clock)
    model = make("gpt_rope")
    monkeypatch.setattr(model, "compile", lambda: None)
    eager = [1.0] * (1 + acceleration.PACE_STEPS)
    shape = fake_run(CompileWhenItPays("auto"), model, clock, eager + [100.5] + [0.5] * 6, 100_000)
    # Without a validation, recorded as the run ends.
    assert acceleration.compile_records()[shape] == acceleration.CompileRecord(100.0, 100.0, 0.5, 1.0)
    fake_run(CompileWhenItPays(True), model, clock, [5.25] + [0.25] * 6, 7)
    assert acceleration.compile_records()[shape] == acceleration.CompileRecord(100.0, 5.0, 0.25, 1.0)


def test_compile_false_leaves_compile_auto_out():
    callback = CompileWhenItPays(compile=False)
    callback.on_train_batch_end(None, None, None, None, 0)
    assert not callback.auto and callback.compiled is None and callback.state_dict() == {"compiled": None}
