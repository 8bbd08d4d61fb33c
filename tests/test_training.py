import importlib
import json
import logging
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import FIXTURES, SHAKESPEARE, TINY, compose_config, compose_train

from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.cli.evaluate import evaluate_checkpoint
from lmzoo.data import windows
from lmzoo.data.corpus import Corpus
from lmzoo.errors import UserError
from lmzoo.files import LOCK
from lmzoo.inference import evaluation
from lmzoo.models import blocks
from lmzoo.reports.plot import read_scalars
from lmzoo.training.run import build, train
from lmzoo.training.tune import TuneSettings, tune_model


def test_short_run_lowers_validation_loss(tmp_path):
    cfg = compose_train(tmp_path, "trainer.max_steps=100", "trainer.val_check_interval=50", "data.batch_size=16",
                        "optim.lr=1e-2")
    result = train(cfg)
    assert result["steps"] == 100
    assert result["best_val_loss"] < math.log(65) - 0.8
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_a_newcomers_30_step_run_warms_up_for_its_share_of_the_steps_and_validates_at_the_end(tmp_path):
    """`python -m lmzoo.train trainer.max_steps=30`, tiny: no warmup or validation interval to lower by hand."""
    result = train(compose_train(tmp_path, "trainer.max_steps=30", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
                                 "trainer.enable_progress_bar=false", "sample_tokens=0", "data.batch_size=4",
                                 "data.val_batches=2", "block_size=32", tiny=False))
    assert result["steps"] == 30 and math.isfinite(result["best_val_loss"])
    schedule = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["lr_schedulers"][0]["lr_lambdas"][0]
    # 5% of 30 steps, rounded.
    assert (schedule["warmup"], schedule["decay"], schedule["shape"]) == (2, 30, "cosine")


def test_reloaded_checkpoint_gives_the_trained_models_logits_and_tokenizer(tmp_path):
    datamodule, lit, trainer = build(compose_train(tmp_path))
    trainer.fit(lit, datamodule=datamodule)
    model, tokenizer, info = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert tokenizer.spec == datamodule.meta.tokenizer
    assert info.global_step == 20
    idx = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        trained = lit.model.eval()(idx).logits
    assert torch.equal(model(idx).logits, trained)
    # Training moved the weights: a fresh model of the same config does not give these logits.
    assert not torch.allclose(type(model.config)(**model.config.as_dict()).build()(idx).logits, trained)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    """2N steps straight, against N steps then a resume for N more (dropout on, so RNG state matters)."""
    common = ["trainer.max_steps=8", "model.dropout=0.1", "optim.warmup_steps=4",
              "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.filename='step{step}'",
              "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=8"]
    straight = tmp_path / "straight"
    train(compose_train(straight, *common))
    halfway = straight / "run" / "checkpoints" / "step4.ckpt"
    assert read_checkpoint(halfway)["global_step"] == 4

    resumed = tmp_path / "resumed"
    # Another init is accepted on resume, and changes nothing: the weights come from the checkpoint.
    train(compose_train(resumed, *common, f"ckpt_path={halfway}", "model.init=plain"))
    expected = read_checkpoint(straight / "run" / "checkpoints" / "last.ckpt")
    actual = read_checkpoint(resumed / "run" / "checkpoints" / "last.ckpt")
    assert actual["global_step"] == expected["global_step"] == 8
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name
    assert actual["lr_schedulers"][0]["last_epoch"] == expected["lr_schedulers"][0]["last_epoch"]


def test_a_checkpoint_from_before_min_lr_ratio_resumes_with_its_absolute_floor(tmp_path, capsys):
    """A run trained with optim.min_lr=5e-5 at lr 2e-3 (a floor of 1/40), its record without min_lr_ratio as
    before it existed, continued by a command of today's defaults (a floor of lr/10): the old floor goes on."""
    first = tmp_path / "first"
    train(compose_train(first, "trainer.max_steps=4", "optim.lr=2e-3", "optim.min_lr=5e-5", "optim.warmup_steps=0"))
    old = read_checkpoint(first / "run" / "checkpoints" / "last.ckpt")
    del old["lmzoo"]["optim"]["min_lr_ratio"]
    torch.save(old, tmp_path / "old.ckpt")
    train(compose_train(tmp_path / "resumed", "trainer.max_steps=6", "optim.lr=2e-3", "optim.warmup_steps=0",
                        f"ckpt_path={tmp_path / 'old.ckpt'}"))
    resumed = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert resumed["lr_schedulers"][0]["lr_lambdas"][0]["floor"] == pytest.approx(1 / 40)
    assert resumed["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(5e-5)
    assert resumed["lmzoo"]["optim"]["min_lr"] == 5e-5
    assert "resuming keeps the checkpoint's optimizer and learning-rate schedule (min_lr=5e-05" in capsys.readouterr().err


def test_selection_never_reads_the_test_split_and_the_summary_reports_the_best_checkpoints_test(tmp_path, monkeypatch):
    """Training, early stopping, checkpoint choice and a tune's trials read the train and val bins only; the test
    split is read once, after training, from the best-validation checkpoint: what evaluate split=test reports."""
    opened, fitting, real = [], [False], windows.open_tokens
    for module in (windows, evaluation):
        monkeypatch.setattr(module, "open_tokens", lambda path, dtype: opened.append((Path(path).name, fitting[0]))
                            or real(path, dtype))
    fit = L.Trainer.fit

    def recorded_fit(*args, **kwargs):
        fitting[0] = True
        try:
            return fit(*args, **kwargs)
        finally:
            fitting[0] = False

    monkeypatch.setattr(L.Trainer, "fit", recorded_fit)
    cfg = compose_train(tmp_path, "trainer.max_steps=12", "trainer.val_check_interval=2", "optim.lr=0.3",
                        "callbacks.early_stopping.patience=1")
    result = train(cfg)
    assert {name for name, during in opened if during} == {"train.bin", "val.bin"}
    assert [name for name, during in opened if not during] == ["test.bin"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # In batches of the run's size, so that the sums are rounded alike.
    evaluated = evaluate_checkpoint(compose_config("evaluate", f"ckpt={result['best_checkpoint']}", "split=test",
                                                   f"batch_size={cfg.data.batch_size}",
                                                   "data=shakespeare_char", f"data.path={SHAKESPEARE}",
                                                   f"paths.data_dir={tmp_path / 'data'}"))
    assert summary["test_loss"] == evaluated["loss"] and summary["test_bpb"] == evaluated["bits_per_byte"]
    assert summary["test_loss"] != summary["best_val_loss"]

    opened.clear()
    folder = tmp_path / "tune"
    folder.mkdir()
    settings = TuneSettings(folder=str(folder), trials=2, seed=0, search={"optim": {"lr": [1e-3, 1e-1]}},
                            prune_after=None, final_seeds=3, final=[])
    tune_model(compose_config("tune", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}", *TINY,
                              "trainer.max_steps=4", "trainer.val_check_interval=2", f"paths.output_dir={folder}"),
               settings, "gpt_rope", folder)
    assert {name for name, _ in opened} == {"train.bin", "val.bin"}


def test_the_test_split_is_measured_in_the_precision_the_run_validated_in(tmp_path, monkeypatch):
    from lmzoo.training.datamodule import TokenDataModule

    measured, test_result = [], TokenDataModule.test_result

    def recorded(self, model):
        measured.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return test_result(self, model)

    monkeypatch.setattr(TokenDataModule, "test_result", recorded)
    for precision in ("32-true", "bf16-mixed"):
        train(compose_train(tmp_path / precision, "trainer.max_steps=2", "trainer.val_check_interval=2",
                            f"trainer.precision={precision}"))
    assert measured == [None, torch.bfloat16]
    summary = json.loads((tmp_path / "bf16-mixed" / "run" / "summary.json").read_text())
    assert math.isfinite(summary["test_loss"])


def test_resume_auto_continues_from_the_run_folder_and_its_summary_covers_every_segment(tmp_path, capsys):
    summary, last = tmp_path / "run" / "summary.json", tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(compose_train(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10"))
    first = json.loads(summary.read_text())
    # Only continued: a new run there would leave checkpoints and a summary of two runs.
    with pytest.raises(UserError, match=r"already holds a run .*continue it with resume=auto, or start a new run in "
                                        r"another folder with paths.output_dir=PATH"):
        train(compose_train(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10"))
    # As if the first segment had taken 1000 s: the later summaries must count them.
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["lmzoo"]["wall_time_s"] = 1000.0
    torch.save(checkpoint, last)
    # resume=auto on a finished run trains nothing, and leaves its summary as it was.
    result = train(compose_train(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10", "resume=auto"))
    assert result["steps"] == 10 and result["best_val_loss"] == first["best_val_loss"]
    assert json.loads(summary.read_text()) == first

    capsys.readouterr()
    result = train(compose_train(tmp_path, "trainer.max_steps=20", "resume=auto"))
    assert result["steps"] == 20 and read_checkpoint(last)["global_step"] == 20
    # Tokens/s and wall time carry over: 20 steps' tokens, and the first segments' time plus this one's.
    (rate,) = [state for key, state in read_checkpoint(last)["callbacks"].items() if key.startswith("TokensPerSecond")]
    assert rate["tokens"] == 20 * 4 * 32
    both = json.loads(summary.read_text())
    assert both["tokens_per_sec"] == pytest.approx(rate["tokens"] / rate["seconds"])
    assert both["wall_time_s"] > 1000
    # The schedule stays the checkpoint's, and the command says so.
    assert ("warning: resuming keeps the checkpoint's optimizer and learning-rate schedule (decay_steps=10), not this "
            "command's optim.decay_steps=20") in capsys.readouterr().err



def test_a_finished_runs_checkpoint_continued_in_another_folder_keeps_its_mfu(tmp_path):
    """ckpt_path= a finished run's last.ckpt, into a new folder and to the same step, trains nothing and writes the
    new folder's summary: with the run's MFU, which needs the FLOPs per token although no training step ran."""
    train(compose_train(tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=10"))
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(compose_train(tmp_path / "again", "trainer.max_steps=10", "trainer.val_check_interval=10",
                        f"ckpt_path={last}"))
    again = json.loads((tmp_path / "again" / "run" / "summary.json").read_text())
    assert again["steps"] == 10 and first["mfu"] > 0 and again["mfu"] == pytest.approx(first["mfu"])


def run_train(monkeypatch, tmp_path, *overrides):
    """python -m lmzoo.train with the tiny settings, in this process, in the run folder tmp_path/run."""
    handlers, level = logging.root.handlers[:], logging.root.level
    monkeypatch.setattr(sys, "argv", ["lmzoo.train", *TINY, f"data.path={SHAKESPEARE}",
                                      f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run",
                                      "trainer.val_check_interval=5", *overrides])
    try:
        importlib.import_module("lmzoo.train").main()
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level


def files_of(folder):
    """Every file in `folder` with its bytes, but the lock file, which names the folder's last holder."""
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file() and path.name != LOCK}


def test_an_ended_run_is_left_as_it_is_however_it_is_continued_unless_it_trains_further(tmp_path, monkeypatch, capsys):
    """A run that ended at step 10, continued with resume=auto or from its own best.ckpt or last.ckpt to step 10 or
    fewer, says so in one line and writes nothing: no checkpoint, summary, provenance, record of the command, log
    or TensorBoard event file changes or appears. A continuation to a later step trains it further."""
    run = tmp_path / "run"
    run_train(monkeypatch, tmp_path, "trainer.max_steps=10")
    ended = files_of(run)
    assert (run / ".hydra" / "overrides.yaml").is_file() and (run / "train.log").is_file()
    for continued in (["resume=auto", "trainer.max_steps=10"],
                      [f"ckpt_path={run}/checkpoints/best.ckpt", "trainer.max_steps=5"],
                      [f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_steps=10"]):
        capsys.readouterr()
        run_train(monkeypatch, tmp_path, *continued)
        assert (f"{run} already ended at step 10 (done); it is left as it is, its summary in {run}/summary.json; to "
                "train it further, continue it with trainer.max_steps above 10") in capsys.readouterr().err
        assert files_of(run) == ended, continued
    run_train(monkeypatch, tmp_path, f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_steps=12")
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    assert "ckpt_path=" in (run / ".hydra" / "overrides.yaml").read_text()


def test_an_ended_budget_run_names_the_budget_that_trains_it_further(tmp_path, monkeypatch, capsys):
    """A token budget sets the steps, and trainer.max_steps beside it is refused: the line names the budget."""
    budget = ["data.batch_size=4", "budget.tokens=1280"]
    run_train(monkeypatch, tmp_path, *budget)
    capsys.readouterr()
    run_train(monkeypatch, tmp_path, "resume=auto", *budget)
    assert ("already ended at step 10 (done); it is left as it is, its summary in "
            f"{tmp_path}/run/summary.json; to train it further, continue it with budget.tokens above 1280"
            ) in capsys.readouterr().err


class LossCurve(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


@pytest.mark.parametrize("name", ["gpt", "moe"])
def test_the_seed_gives_the_loss_curve_of_lmzoo_0_1(tmp_path, monkeypatch, name):
    """The numbers in tests/fixtures/v0.1/loss_curves.json were written by lmzoo 0.1.0, before the redesign,
    whose AdamW was PyTorch's foreach implementation (the fused one's updates differ in the last bits), whose
    schedule decayed to the absolute optim.min_lr=1e-4, which validated on all the text after train_fraction
    (this release keeps its second half for test): that text, twice, as a validation source gives 0.1's
    validation split whole), and whose dropout was PyTorch's, another stream of masks than lmzoo's own draws."""
    monkeypatch.setattr(blocks, "dropout", lambda x, p: F.dropout(x, p, training=True))
    pinned = json.loads((FIXTURES / "v0.1" / "loss_curves.json").read_text())[name]
    text = SHAKESPEARE.read_bytes()
    held_out = Corpus([SHAKESPEARE], None).split_offset(0.9)
    (tmp_path / "train.txt").write_bytes(text[:held_out])
    (tmp_path / "val.txt").write_bytes(text[held_out:] * 2)
    datamodule, lit, trainer = build(compose_train(
        tmp_path, *pinned["overrides"], "optim.fused=false", "optim.min_lr=1e-4", f"data.path={tmp_path / 'train.txt'}",
        f"data.val_path={tmp_path / 'val.txt'}", "data.test_fraction=0.5", tiny=False))
    curve = LossCurve()
    trainer.callbacks.append(curve)
    trainer.fit(lit, datamodule=datamodule)
    assert len(curve.losses) == 50
    # Not bit for bit: another CPU's kernels (AVX-512 against AVX2, say) round float32 sums differently, by
    # about 1e-7 a step. A change of behaviour moves the curve by far more than the tolerance.
    assert curve.losses == pytest.approx(pinned["train_loss"], abs=1e-4)
    assert lit.best_val_loss == pytest.approx(pinned["best_val_loss"], abs=1e-4)


def test_early_stopping_says_so_and_leaves_last_checkpoint_at_the_reported_step(tmp_path, capsys):
    # A learning rate too small to lower the loss by min_delta: patience 1 ends the run at its second validation.
    train(compose_train(tmp_path, "trainer.max_steps=40", "trainer.val_check_interval=5", "optim.lr=1e-9",
                        "optim.min_lr=0", "optim.warmup_steps=0", "callbacks.early_stopping.patience=1",
                        "+callbacks.early_stopping.min_delta=1"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "done: stopped early at step 10" and summary["steps"] == 10
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert ("stopped early at step 10 of 40: val/loss did not improve in 1 validations "
            "(callbacks.early_stopping.patience)") in capsys.readouterr().err


def test_a_run_stopped_at_its_threshold_is_done_early_and_resume_auto_leaves_it(tmp_path, capsys):
    """A recall run stops once val/accuracy reaches 0.99 (experiment=recall): an ended run that a study continued
    with resume=auto must pass over, not train on."""
    overrides = ["trainer.max_steps=40", "trainer.val_check_interval=5",
                 "+callbacks.early_stopping.stopping_threshold=100"]
    train(compose_train(tmp_path, *overrides))
    summary_path = tmp_path / "run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "done: stopped early at step 5" and summary["steps"] == 5
    assert ("stopped early at step 5 of 40: val/loss reached 100 (callbacks.early_stopping.stopping_threshold)"
            in capsys.readouterr().err)
    before = summary_path.read_bytes()
    train(compose_train(tmp_path, *overrides, "resume=auto"))
    assert summary_path.read_bytes() == before
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_a_minutes_budget_keeps_a_max_steps_typed_on_the_command_line(tmp_path, monkeypatch, capsys):
    handlers, level = logging.root.handlers[:], logging.root.level
    monkeypatch.setattr(sys, "argv", ["lmzoo.train", *TINY, f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path}/data",
                                      f"hydra.run.dir={tmp_path}/run", "budget.minutes=10", "trainer.max_steps=3",
                                      "trainer.val_check_interval=3"])
    try:
        importlib.import_module("lmzoo.train").main()
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level
    assert "budget.minutes=10: training stops after 10 minutes, or at trainer.max_steps=3 if sooner" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize("at, replaced", [("chosen", "0.003 as tuned"),
                                          ("upper", "0.01 as searched beside the tuned value (tuned_at=upper)")])
def test_a_key_typed_beside_tuned_values_wins_and_says_which_tuned_value_it_replaces(tmp_path, monkeypatch, capsys, at,
                                                                                     replaced):
    """The fitted entry ({value, interval, neighbours}) at its value or a neighbour, and a plain one."""
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("gpt_rope:\n  optim.lr: {value: 0.003, interval: [0.002, 0.004], neighbours: [0.001, 0.01]}\n"
                     "  optim.weight_decay: 0.05\n")
    handlers, level = logging.root.handlers[:], logging.root.level
    monkeypatch.setattr(sys, "argv", ["lmzoo.train", *TINY, f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path}/data",
                                      f"hydra.run.dir={tmp_path}/run", f"tuned={tuned}", f"tuned_at={at}",
                                      "optim.lr=0.001", "trainer.max_steps=3", "trainer.val_check_interval=3"])
    try:
        importlib.import_module("lmzoo.train").main()
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level
    assert f"optim.lr=0.001 as typed, not {replaced} in {tuned}" in capsys.readouterr().err
    # The run trained at the typed value, and its records say so: the tuned value it took is the weight decay alone.
    optim = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]["optim"]
    assert (optim["lr"], optim["weight_decay"]) == (0.001, 0.05)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tuned"] == {"optim.weight_decay": 0.05}


def test_a_validation_interval_beyond_the_run_validates_at_its_end_and_the_last_step_is_logged(tmp_path):
    train(compose_train(tmp_path, "trainer.max_steps=12", "trainer.val_check_interval=50", "trainer.log_every_n_steps=5"))
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")["global_step"] == 12
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    # Steps 5, 10 and the last one, 12, though it is no multiple of 5: a curve against FLOPs reaches the budget.
    steps, flops = scalars["train/flops"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(steps) == 3 and flops[-1] == summary["flops"]
    assert len(scalars["train/loss"][0]) == 3 and scalars["train/loss"][0][-1] == steps[-1]
