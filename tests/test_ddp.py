"""Lightning DDP on 2 CPU processes (gloo) trains exactly as one process with the same global batch."""

import pytest
import torch
from helpers import compose_train, train_process

from lmzoo.checkpoints import read_checkpoint
from lmzoo.training.run import train

# Validation every 3 steps on 8 fixed windows: 2 batches of 4 split between the ranks, or one batch of 8.
RUN = ["trainer.max_steps=6", "trainer.val_check_interval=3", "optim.warmup_steps=2"]


def run_ddp(tmp_path, *overrides):
    return train_process(tmp_path, *RUN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                         "data.batch_size=4", "data.val_batches=2", *overrides)


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    ddp = run_ddp(tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr
    train(compose_train(tmp_path / "single", *RUN, "data.batch_size=8", "data.val_batches=1"))
    expected = read_checkpoint(tmp_path / "single" / "run" / "checkpoints" / "last.ckpt")
    actual = read_checkpoint(tmp_path / "ddp" / "run" / "checkpoints" / "last.ckpt")
    assert actual["global_step"] == expected["global_step"] == 6
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert actual["lmzoo"]["best_val_loss"] == pytest.approx(expected["lmzoo"]["best_val_loss"], rel=1e-5)
    # One run folder and one TensorBoard log, written by rank 0.
    run = tmp_path / "ddp" / "run"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_two_process_resume_is_exact(tmp_path):
    assert run_ddp(tmp_path / "straight").returncode == 0
    # Both ranks get SIGTERM after step 2, as under a preempting scheduler, and save at step 3 together.
    stopped = run_ddp(tmp_path / "resumed", "+callbacks.fault._target_=helpers.fault_injection.SignalAt",
                      "+callbacks.fault.step=2", "+callbacks.fault.signal=SIGTERM")
    assert stopped.returncode == 128 + 15, stopped.stderr
    assert read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed = run_ddp(tmp_path / "resumed", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    expected = read_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt")
    actual = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt")
    assert actual["global_step"] == expected["global_step"] == 6
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name
