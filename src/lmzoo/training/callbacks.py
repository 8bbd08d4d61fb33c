"""Callbacks of lmzoo's own; the rest come from Lightning."""

import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from lmzoo.training.compat import logs_this_step, lr_multiplier
from lmzoo.training.perf import describe_peak, peak_flops


class TokensPerSecond(L.Callback):
    """Logs `tokens_per_sec`: training tokens per second of wall time between batch ends, over all ranks; and
    from the model's training FLOPs per token (LitLM.flops_per_token), `perf/flops_per_token`, the cumulative
    `train/flops`, and `perf/mfu`: the FLOP/s achieved over the hardware's peak (lmzoo.training.perf, or
    `peak_flops` when given), all ranks together. The bar shows tokens/s and MFU.

    Data loading and every hook between steps count; validation does not. The logged rate and MFU are
    smoothed; `mean_rate` and `mfu` are averages over the whole run, for its summary: the counts are kept in
    checkpoints, so a resumed run's averages cover its earlier segments too.
    """

    def __init__(self, smoothing: float = 0.9, peak_flops: float | None = None):
        self.smoothing = smoothing
        self.given_peak = peak_flops
        # FLOP/s of all the run's devices together; None when unknown.
        self.peak = None
        self.rate = None
        self.last_end = None
        self.tokens, self.seconds = 0, 0.0
        self.flops_per_token = 0

    @property
    def mean_rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    @property
    def mfu(self) -> float | None:
        """The run's model FLOPs utilization, a fraction of the peak."""
        return self.mean_rate * self.flops_per_token / self.peak if self.peak and self.mean_rate else None

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "peak": self.peak}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens, self.seconds = state_dict["tokens"], state_dict["seconds"]
        self.peak = state_dict.get("peak")

    def setup(self, trainer, pl_module, stage):
        # Here, not at train start: a finished run's checkpoint continued to its own step in another folder
        # (ckpt_path=) trains no step, and the summary's MFU still needs the FLOPs per token.
        self.flops_per_token = pl_module.flops_per_token

    def on_train_start(self, trainer, pl_module):
        device_peak = peak_flops(pl_module.device, trainer.precision, self.given_peak)
        self.peak = device_peak and device_peak * trainer.world_size
        if trainer.is_global_zero:
            print(describe_peak(pl_module.device, trainer.precision, self.given_peak, device_peak), file=sys.stderr)

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
        if logs_this_step(trainer):
            pl_module.log("tokens_per_sec", self.rate, prog_bar=True)
            pl_module.log("perf/flops_per_token", float(self.flops_per_token))
            pl_module.log("train/flops", float(self.tokens * self.flops_per_token))
            if self.peak:
                pl_module.log("perf/mfu", self.rate * self.flops_per_token / self.peak, prog_bar=True)


class ModelSummary(L.Callback):
    """The model's summary as training starts (trainer.enable_model_summary): its parameters, its own lines
    (LanguageModel.describe) and its training FLOPs per token. It replaces Lightning's table, which names one
    module and shows a FLOPs column of 0 for a model that gives Lightning no example input."""

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            print("\n".join([*pl_module.model.describe(),
                             f"training FLOPs per token: {pl_module.flops_per_token:,} "
                             "(lmzoo.training.plan.training_flops_per_token)"]))


class ValidateAtEnd(L.Callback):
    """Validates (and so checkpoints) at the last step, also when it is not a multiple of
    trainer.val_check_interval, as a budget's step count seldom is: Lightning validates a run it is told
    to stop, but not one that reaches max_steps."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # global_step reaches max_steps only after the last step's optimizer update (its last micro-batch).
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ScheduleToDeadline(L.Callback):
    """Under a minutes budget (`minutes`; nothing when null), fits the learning-rate schedule to the steps
    expected by the deadline: the steps so far plus the time left at the run's pace so far, validation
    included. It is re-estimated at every step, so the learning rate reaches its floor near the end."""

    def __init__(self, minutes: float | None = None):
        self.minutes = minutes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        elapsed = timer.time_elapsed("train") if timer else 0
        if not self.minutes or not elapsed or not trainer.global_step:
            return
        expected = trainer.global_step + round(timer.time_remaining("train") * trainer.global_step / elapsed)
        if trainer.max_steps > 0:
            expected = min(expected, trainer.max_steps)
        # LambdaLR keeps its Schedule's settings in checkpoints, so a resumed run continues this estimate.
        lr_multiplier(trainer.lr_scheduler_configs[0].scheduler).stretch(expected)


class PeakMemory(L.Callback):
    """Logs `perf/max_memory_gb`: the most GPU memory allocated during a training batch (forward, backward
    and, on the batch that ends a step, the optimizer), in GB (10^9 bytes). Does nothing off CUDA."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Logged on the steps the logger writes; reading the peak does not sync the device.
        if pl_module.device.type == "cuda" and logs_this_step(trainer):
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
