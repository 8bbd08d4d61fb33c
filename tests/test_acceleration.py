"""Mixed precision with clipping and the fused AdamW, on CPU; what trainer.precision=auto and compile=auto choose
(the CPU's bf16 units faked both ways); the peak a run's MFU is measured against."""

import pytest
import torch
from helpers import compose_train
from helpers.recording import StepRecorder

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.training import acceleration
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


def test_auto_precision_is_bf16_on_a_cpu_with_bf16_units_for_wide_models_only(cpu_with):
    cpu_with("amx_bf16", "avx512_bf16")
    assert choose_precision("auto", "cpu", 384)[0] == choose_precision("auto", "cpu", 768)[0] == "bf16-mixed"
    precision, reason = choose_precision("auto", "cpu", 128)
    assert precision == "32-true" and "width 128 is below 384" in reason
    assert choose_precision("auto", "cpu", None)[0] == "32-true"
    cpu_with("avx512_bf16")
    assert choose_precision("auto", "cpu", 384) == ("bf16-mixed", "auto: this CPU has avx512_bf16 and the model's width "
                                                    "384 is at least 384, where bf16 autocast was measured faster than fp32")
    cpu_with()
    precision, reason = choose_precision("auto", "cpu", 768)
    assert precision == "32-true" and "no native bf16 matrix unit (amx_bf16, avx512_bf16)" in reason
    # An explicit precision wins, either way.
    assert choose_precision("bf16-mixed", "cpu", 32) == ("bf16-mixed", "trainer.precision=bf16-mixed")
    cpu_with("amx_bf16")
    assert choose_precision("32-true", "cpu", 768) == ("32-true", "trainer.precision=32-true")
    # Other devices than CUDA and CPU train in fp32.
    assert choose_precision("auto", "mps", 768)[0] == "32-true"


def test_auto_precision_is_bf16_on_cuda_gpus_that_have_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: True)
    assert choose_precision("auto", "cuda", 32) == ("bf16-mixed", "auto: the NVIDIA H100 computes in bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: False)
    assert choose_precision("auto", "cuda", 768)[0] == "32-true"


@pytest.mark.parametrize("flags, width, expected", [((), 384, "32-true"), (("amx_bf16",), 384, "bf16-mixed"),
                                                    (("amx_bf16",), 128, "32-true")])
def test_a_run_says_which_precision_auto_chose_and_trains_in_it(tmp_path, capsys, cpu_with, data_dir, flags, width,
                                                                expected):
    cpu_with(*flags)
    cfg = compose_train(tmp_path, data_dir, "trainer.accelerator=cpu", f"model.n_embd={width}", "model.n_layer=1")
    _, lit, trainer = build(cfg)
    assert str(trainer.precision) == expected == lit.provenance["config"]["trainer"]["precision"]
    assert f"precision: {expected} (auto: " in capsys.readouterr().err


def test_compile_auto_compiles_when_the_time_left_repays_it_and_a_resumed_run_follows(tmp_path, capsys, monkeypatch):
    """The choice, not the compiling (tests/test_gpu.py trains every zoo model compiled): torch.compile is
    replaced by a record of how many of the run's batches had started when it was called."""
    batches, compiled_at = [], []
    monkeypatch.setattr(LitLM, "on_train_batch_start", lambda self, batch, batch_idx: batches.append(batch_idx))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compiled_at.append(len(batches)))
    # As if compiling took no time at all.
    monkeypatch.setattr(acceleration, "COMPILE_SECONDS", 0.0)
    fit(compose_train(tmp_path / "straight", *RESUMABLE, "trainer.max_steps=12"))
    # A first step, PACE_STEPS timed eagerly, then compiled.
    assert compiled_at == [1 + acceleration.PACE_STEPS] and "compile: true (auto: " in capsys.readouterr().err
    # The choice is in the checkpoints; a resumed run follows it from its first step, whatever its own pace says.
    checkpoint = tmp_path / "straight" / "run" / "checkpoints" / "step8.ckpt"
    (state,) = [state for key, state in read_checkpoint(checkpoint)["callbacks"].items()
                if key.startswith("CompileWhenItPays")]
    assert state == {"compiled": True}
    monkeypatch.setattr(acceleration, "COMPILE_SECONDS", 1e9)
    batches.clear()
    fit(compose_train(tmp_path / "resumed", *RESUMABLE, "trainer.max_steps=12", f"ckpt_path={checkpoint}"))
    assert compiled_at[1:] == [0]
    assert "compile: true (auto: as the run this one resumes chose)" in capsys.readouterr().err


@pytest.mark.parametrize("setting", [True, False])
def test_compile_true_and_false_leave_compile_auto_out(setting):
    callback = CompileWhenItPays(compile=setting)
    callback.on_train_batch_end(None, None, None, None, 0)
    assert not callback.auto and callback.compiled is None
