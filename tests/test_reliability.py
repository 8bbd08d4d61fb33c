"""Faults inside one process: a non-finite loss, a full disk."""

import errno
import json

import lightning as L
import pytest
import torch
from helpers import compose_train

from lmzoo import __version__
from lmzoo.checkpoints import load_model, read_checkpoint
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.cli.describe import describe
from lmzoo.errors import UserError
from lmzoo.reports.compare import compare
from lmzoo.training import checkpoint_io
from lmzoo.training.run import build, train

RUN = ["trainer.max_steps=12", "trainer.val_check_interval=5"]


def test_non_finite_loss_stops_with_one_line_naming_the_step_and_keeps_the_best_checkpoint(tmp_path, nan_loss_at_steps):
    nan_loss_at_steps(7)
    with pytest.raises(UserError, match=r"loss is nan at step 7; .*trainer.skip_nonfinite=true.*best.ckpt is intact"):
        train(compose_train(tmp_path, *RUN))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(checkpoints / "best.ckpt")["global_step"] == 5
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 5


def test_skip_nonfinite_skips_those_updates_and_counts_them(tmp_path, nan_loss_at_steps):
    nan_loss_at_steps(3, 7)
    datamodule, lit, trainer = build(compose_train(tmp_path, *RUN, "trainer.skip_nonfinite=true"))
    trainer.fit(lit, datamodule=datamodule)
    assert trainer.global_step == 12 and lit.nonfinite_skips == 2
    assert trainer.logged_metrics["train/nonfinite_skips"] == 2
    assert all(torch.isfinite(p).all() for p in lit.model.parameters())


def test_a_diverged_run_says_so_and_no_command_uses_its_checkpoints(tmp_path):
    # Skipped updates keep the loss from stopping the run; the weights still grow finite and huge.
    with pytest.raises(UserError, match=r"^the run diverged at step 5: val/loss is NaN or inf \(no checkpoint was saved "
                                        r"before it\); train again with a lower optim.lr$"):
        train(compose_train(tmp_path, *RUN, "trainer.skip_nonfinite=true", "optim.lr=1e9", "optim.warmup_steps=0"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # Its best checkpoint holds weights that are not numbers: no test metric either.
    assert (summary["status"], summary["steps"], summary["best_val_loss"], summary.get("test_bpb")) == (
        "diverged at step 5", 5, None, None)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert read_checkpoint(best)["lmzoo"]["diverged_at"] == 5
    for use in (load_model, lambda path: export_checkpoint(str(path), str(tmp_path / "out"))):
        with pytest.raises(UserError, match=f"^{best} was saved after its run diverged at step 5"):
            use(best)
    assert "| diverged at step 5" in describe(str(best))
    assert "Not ranked: run (diverged at step 5)." in compare(tmp_path)


def test_unwritable_checkpoint_folder_is_one_clear_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write .*a_file/checkpoints/best.ckpt \(Not a directory\)"):
        train(compose_train(tmp_path, *RUN, f"callbacks.model_checkpoint.dirpath={tmp_path / 'a_file' / 'checkpoints'}"))


class FullDisk:
    """A file on a disk that fills up after a few bytes; torch.save re-raises its OSError as a RuntimeError."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        self.file.flush()


def test_full_disk_is_one_clear_line_and_leaves_the_previous_last_checkpoint(tmp_path, monkeypatch):
    save, saves = torch.save, []

    def save_until_disk_full(obj, file):
        saves.append(file)
        # best.ckpt and last.ckpt at step 5 fit; the disk fills up at step 10
        return save(obj, file if len(saves) <= 2 else FullDisk(file))

    monkeypatch.setattr(checkpoint_io.torch, "save", save_until_disk_full)
    with pytest.raises(UserError, match=r"cannot write .*best.ckpt \(No space left on device\); free disk space"):
        train(compose_train(tmp_path, *RUN))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 5


class LossCurve(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def loss_curve(tmp_path, *overrides):
    datamodule, lit, trainer = build(compose_train(tmp_path, "model.dropout=0.1", *overrides))
    curve = LossCurve()
    trainer.callbacks.append(curve)
    trainer.fit(lit, datamodule=datamodule)
    return curve.losses


def test_the_seed_makes_a_run_deterministic(tmp_path):
    first = loss_curve(tmp_path / "first", "seed=7")
    assert loss_curve(tmp_path / "second", "seed=7") == first
    assert loss_curve(tmp_path / "other", "seed=8") != first


def test_run_folder_and_checkpoints_record_config_version_and_commit(tmp_path):
    train(compose_train(tmp_path, "trainer.max_steps=5", "trainer.val_check_interval=5", "seed=11"))
    on_disk = json.loads((tmp_path / "run" / "provenance.json").read_text())
    in_checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["lmzoo"]["run"]
    for record in (on_disk, in_checkpoint):
        assert record["version"] == __version__ and record["config"]["seed"] == 11
        assert record["config"]["paths"]["output_dir"] == str(tmp_path / "run")
    assert in_checkpoint["git_commit"] == on_disk["git_commit"]
    assert on_disk["git_commit"] is None or len(on_disk["git_commit"].removesuffix("-dirty")) == 40
