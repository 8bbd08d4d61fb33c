"""Test-only callbacks that signal the training process at a chosen moment, added to a run from the command
line with +callbacks.fault._target_=helpers.fault_injection.SignalAt (PYTHONPATH=tests)."""

import os
import signal as signals

import lightning as L
import torch


class SignalAt(L.Callback):
    """Sends `signal` to this process at `step`, after a training batch, during validation, or halfway
    through writing a checkpoint."""

    def __init__(self, step: int, where: str = "batch", signal: str = "SIGKILL"):
        self.step, self.where, self.signum = step, where, getattr(signals, signal)

    def fire(self, trainer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "batch":
            self.fire(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.where == "validation":
            self.fire(trainer)

    def on_fit_start(self, trainer, pl_module):
        if self.where != "save":
            return
        save = torch.save

        def save_half_then_signal(obj, file):
            if trainer.global_step != self.step:
                return save(obj, file)
            save(obj, file)
            file.truncate(file.tell() // 2)
            file.flush()
            self.fire(trainer)

        torch.save = save_half_then_signal


def fault(step: int, where: str = "batch", signal: str = "SIGKILL") -> list[str]:
    """The overrides that add SignalAt to a run resumed with resume=auto."""
    return ["+callbacks.fault._target_=helpers.fault_injection.SignalAt", f"+callbacks.fault.step={step}",
            f"+callbacks.fault.where={where}", f"+callbacks.fault.signal={signal}", "resume=auto"]
