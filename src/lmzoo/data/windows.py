"""Training and validation windows over a memory-mapped token bin, as plain PyTorch datasets.

Training batches are random windows, as in nanoGPT's get_batch, but each batch is drawn from a
generator seeded by (seed, batch index) of which each rank keeps its share: the data stream is a pure
function of the step, so a resumed run sees exactly the batches an uninterrupted one would.
Validation uses a fixed, evenly spaced set of windows, so val/loss is comparable across runs and models.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


def open_tokens(path: Path, dtype: str) -> np.memmap:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def window_batch(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[o : o + block_size + 1] for o in offsets]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


class RandomWindows(IterableDataset):
    """An endless stream of training batches; batch i depends only on (seed, i, rank, world size)."""

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        self.path, self.dtype = path, dtype
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start

    def __iter__(self):
        tokens = open_tokens(self.path, self.dtype)
        worker = get_worker_info()
        # DataLoader takes batches from its workers in turn, so worker w serving every
        # num_workers-th batch keeps the stream in step order.
        index = self.start + (worker.id if worker else 0)
        stride = worker.num_workers if worker else 1
        high = len(tokens) - self.block_size
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while True:
            # Every rank draws the global batch of step `index` and keeps its own share: ranks see
            # different windows, and N ranks train on what one process with N times the batch would.
            rng = np.random.default_rng([self.seed, index])
            offsets = rng.integers(0, high, size=self.batch_size * self.world_size)[mine]
            yield window_batch(tokens, offsets, self.block_size)
            index += stride


class FixedWindows(torch.utils.data.Dataset):
    """Evenly spaced validation windows, batched."""

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, max_batches: int):
        self.path, self.dtype = path, dtype
        self.block_size, self.batch_size = block_size, batch_size
        tokens = open_tokens(path, dtype)
        count = min(max_batches * batch_size, len(tokens) - block_size)
        self.offsets = np.linspace(0, len(tokens) - block_size - 1, num=count).astype(np.int64)

    def __len__(self):
        return -(-len(self.offsets) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        offsets = self.offsets[index * self.batch_size : (index + 1) * self.batch_size]
        return window_batch(open_tokens(self.path, self.dtype), offsets, self.block_size)
