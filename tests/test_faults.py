"""Faults really happen here: training runs in a subprocess that gets SIGKILL, SIGTERM or SIGINT at a
chosen moment, then resumes with resume=auto; it must end bit-identical to an uninterrupted run."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SHAKESPEARE, TINY, compose_train

from lmzoo.checkpoints import read_checkpoint
from lmzoo.training.run import train

# Dropout on, so the restored RNG state matters; validation (and a checkpoint) every 5 steps.
RUN = ["trainer.max_steps=16", "trainer.val_check_interval=5", "model.dropout=0.1", "optim.warmup_steps=4",
       "callbacks.early_stopping.patience=100"]


def run_cli(tmp_path, *overrides):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmzoo.train", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={tmp_path / 'run'}", *TINY, *RUN, *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def fault(step, where="batch", signal="SIGKILL"):
    return ["+callbacks.fault._target_=helpers.fault_injection.SignalAt", f"+callbacks.fault.step={step}",
            f"+callbacks.fault.where={where}", f"+callbacks.fault.signal={signal}", "resume=auto"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    train(compose_train(folder, *RUN))
    return read_checkpoint(folder / "run" / "checkpoints" / "last.ckpt")


def assert_same_weights(path, expected):
    actual = read_checkpoint(path)
    assert actual["global_step"] == expected["global_step"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name


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
