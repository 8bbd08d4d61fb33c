"""Callbacks of lmzoo's own; the rest come from Lightning."""

import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch


class TokensPerSecond(L.Callback):
    """Logs `tokens_per_sec`: training tokens per second of wall time between batch ends, over all ranks.

    Data loading and every hook between steps count; validation does not. The logged rate is smoothed;
    `mean_rate` is the average over the whole run, for its summary: its counts are kept in checkpoints, so a
    resumed run's rate covers its earlier segments too.
    """

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.rate = None
        self.last_end = None
        self.tokens, self.seconds = 0, 0.0

    @property
    def mean_rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens, self.seconds = state_dict["tokens"], state_dict["seconds"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last_end is None:
            self.last_end = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        self.last_end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        seconds, self.last_end = now - self.last_end, now
        tokens = batch[0].numel() * trainer.world_size
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds
        rate = tokens / seconds
        self.rate = rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
        # global_step has already counted this step here; log on the steps the logger writes.
        if trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log("tokens_per_sec", self.rate, prog_bar=True)


class PeakMemory(L.Callback):
    """Logs `perf/max_memory_gb`: the most GPU memory allocated during a training batch (forward, backward
    and, on the batch that ends a step, the optimizer), in GB (10^9 bytes). Does nothing off CUDA."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Logged on the steps the logger writes, as tokens_per_sec; reading the peak does not sync the device.
        if pl_module.device.type == "cuda" and trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log("perf/max_memory_gb", torch.cuda.max_memory_allocated(pl_module.device) / 1e9)


class SaveOnSignal(L.Callback):
    """On SIGTERM (preemption) or SIGINT (Ctrl-C), saves last.ckpt at the current step and exits.

    The signal handler only sets a flag: the save happens at the next batch end, where the step is
    complete and the checkpoint resumes exactly. The handlers in place before training come back after it.
    """

    signals = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.previous_handlers = {}

    def on_train_start(self, trainer, pl_module):
        # After Lightning's own SIGTERM handler is in place (it would stop without saving), so ours replaces it.
        self.received = None
        for signum in self.signals:
            self.previous_handlers[signum] = signal.signal(signum, self.note)

    def note(self, signum, frame):
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Every rank takes the same decision, so all of them join the save and stop together.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        checkpoint = trainer.checkpoint_callback
        path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        # ModelCheckpoint keeps writing last.ckpt after a resume only when its state names that file.
        checkpoint.last_model_path = str(path)
        trainer.save_checkpoint(path)
        name = signal.Signals(self.received or signal.SIGTERM).name
        if trainer.is_global_zero:
            print(f"stopped by {name} at step {trainer.global_step}; saved {path}; continue with resume=auto "
                  "and the same hydra.run.dir", file=sys.stderr)
        raise SystemExit(128 + (self.received or signal.SIGTERM))

    def on_train_end(self, trainer, pl_module):
        self.restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        self.restore_handlers()

    def restore_handlers(self):
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}
