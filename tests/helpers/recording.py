"""A test-only callback that records what each training step did."""

import math

import lightning as L
from torch._dynamo.utils import counters


class StepRecorder(L.Callback):
    """After every training batch: its loss, and how many graphs torch.compile has built so far."""

    def __init__(self):
        self.losses: list[float] = []
        self.graphs: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item() if outputs else math.nan)
        self.graphs.append(counters["stats"]["unique_graphs"])

    def loss_fell(self, margin: float = 0.2) -> bool:
        """Every loss finite, and the last five lower than the first five by `margin` on average."""
        first, last = self.losses[:5], self.losses[-5:]
        return all(map(math.isfinite, self.losses)) and sum(last) / 5 < sum(first) / 5 - margin
