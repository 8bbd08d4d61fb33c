"""Callbacks of lmzoo's own; the rest come from Lightning."""

import time

import lightning as L


class TokensPerSecond(L.Callback):
    """Logs `tokens_per_sec`: training tokens per second of wall time between batch ends, over all ranks.

    Data loading and every hook between steps count; validation does not. The logged rate is smoothed;
    `mean_rate` is the average over the whole fit, for the run's summary.
    """

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.rate = None
        self.last_end = None
        self.tokens, self.seconds = 0, 0.0

    @property
    def mean_rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

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
