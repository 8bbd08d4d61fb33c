"""Callbacks of lmzoo's own; the rest come from Lightning."""

import time

import lightning as L


class TokensPerSecond(L.Callback):
    """Logs `tokens_per_sec`: training tokens processed per second of wall time, over all ranks.

    The logged rate is smoothed; `mean_rate` is the average over the whole fit, for the run's summary.
    """

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.rate = None
        self.started = None
        self.tokens, self.seconds = 0, 0.0

    @property
    def mean_rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        seconds = time.perf_counter() - self.started
        tokens = batch[0].numel() * trainer.world_size
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds
        rate = tokens / seconds
        self.rate = rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
        pl_module.log("tokens_per_sec", self.rate, prog_bar=True)
