"""Faults really happen here: training runs in a subprocess that gets SIGKILL, SIGTERM or SIGINT at a
chosen moment, then resumes with resume=auto; it must end bit-identical to an uninterrupted run."""

import pytest
from helpers import assert_same_weights, compose_train, train_process
from helpers.fault_injection import fault

from lmzoo.checkpoints import read_checkpoint
from lmzoo.training.run import train

# Dropout on, so the restored RNG state matters; validation (and a checkpoint) every 5 steps.
RUN = ["trainer.max_steps=16", "trainer.val_check_interval=5", "model.dropout=0.1", "optim.warmup_steps=4",
       "callbacks.early_stopping.patience=100"]


def run_cli(tmp_path, *overrides):
    return train_process(tmp_path, *RUN, *overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    train(compose_train(folder, *RUN))
    return read_checkpoint(folder / "run" / "checkpoints" / "last.ckpt")


def test_kill_9_anywhere_then_resume_auto_ends_bit_identical(tmp_path, uninterrupted):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run_cli(tmp_path, *fault(7)).returncode == -9
    assert read_checkpoint(last)["global_step"] == 5
    assert run_cli(tmp_path, *fault(10, "validation")).returncode == -9
    assert read_checkpoint(last)["global_step"] == 5
    # Killed halfway through writing step 10's checkpoints: the complete previous last.ckpt is still there,
    # beside the half-written file, which the next run cleans.
    assert run_cli(tmp_path, *fault(10, "save")).returncode == -9
    assert read_checkpoint(last)["global_step"] == 5
    assert list(last.parent.glob(".*.partial"))
    finished = run_cli(tmp_path, "resume=auto")
    assert finished.returncode == 0, finished.stderr
    assert_same_weights(last, uninterrupted)
    assert sorted(path.name for path in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_sigterm_and_sigint_save_last_checkpoint_mid_interval_and_resume_exactly(tmp_path, uninterrupted):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stopped = run_cli(tmp_path, *fault(3, signal="SIGTERM"))
    assert stopped.returncode == 128 + 15, stopped.stderr
    # The handler notes the signal; the save comes at the next batch end.
    assert read_checkpoint(last)["global_step"] == 4
    assert "stopped by SIGTERM at step 4" in stopped.stderr and "Traceback" not in stopped.stderr
    interrupted = run_cli(tmp_path, *fault(12, signal="SIGINT"))
    assert interrupted.returncode == 128 + 2, interrupted.stderr
    assert read_checkpoint(last)["global_step"] == 13
    assert run_cli(tmp_path, "resume=auto").returncode == 0
    assert_same_weights(last, uninterrupted)
    assert sorted(path.name for path in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
