"""A LightningDataModule over memory-mapped token bins.

Training batches are random windows, as in nanoGPT's get_batch, but each batch is drawn from a
generator seeded by (seed, batch index) of which each rank keeps its share: the data stream is a pure function of the step, so
a resumed run sees exactly the batches an uninterrupted one would. Validation uses a fixed,
evenly spaced set of windows, so val/loss is comparable across runs and models.
"""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmzoo.data.bins import check_block_size, prepare, read_meta
from lmzoo.errors import UserError
from lmzoo.tokenizers import Tokenizer, tokenizer_from_spec


def open_tokens(path: Path, dtype: str) -> np.memmap:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def window_batch(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[o : o + block_size + 1] for o in offsets]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


class RandomWindows(IterableDataset):
    """An endless stream of training batches; batch i depends only on (seed, i, rank, world size)."""

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, seed: int, rank: int,
                 world_size: int, start: int):
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


class TokenDataModule(L.LightningDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        tokenizer: dict,
        block_size: int,
        batch_size: int,
        path: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        val_path: str | None = None,
        dataset: dict | None = None,
        train_fraction: float = 0.9,
        document_separator: str | None = None,
        dtype: str | None = None,
        prepare_workers: int | None = None,
        val_batches: int = 20,
        num_workers: int = 0,
        seed: int = 1337,
    ):
        super().__init__()
        for key, value in (("block_size", block_size), ("data.batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{key} must be an integer, got {value!r}")
        if block_size <= 0:
            raise UserError(f"block_size must be positive, got {block_size}")
        if batch_size <= 0:
            raise UserError(f"data.batch_size must be positive, got {batch_size}")
        self.name = name
        self.data_dir = Path(root).expanduser() / name
        self.source = {"path": path, "url": url, "sha256": sha256, "val_path": val_path,
                       "dataset": dict(dataset) if dataset else None}
        self.tokenizer_config = dict(tokenizer)
        self.train_fraction, self.document_separator = train_fraction, document_separator
        self.dtype, self.prepare_workers = dtype, prepare_workers
        self.block_size, self.batch_size = block_size, batch_size
        self.val_batches, self.num_workers, self.seed = val_batches, num_workers, seed
        self.meta: dict | None = None

    def prepare_data(self):
        self.meta = prepare(
            self.data_dir,
            self.tokenizer_config,
            train_fraction=self.train_fraction,
            document_separator=self.document_separator,
            cache_dir=Path(self.data_dir).parent / "downloads",
            dtype=self.dtype,
            block_size=self.block_size,
            workers=self.prepare_workers,
            **self.source,
        )

    def setup(self, stage: str | None = None):
        if self.meta is None:
            self.meta = read_meta(self.data_dir)
        if self.meta is None:
            raise UserError(f"no prepared data in {self.data_dir}; run python -m lmzoo.prepare data={self.name}")
        check_block_size(self.meta["splits"], self.block_size)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def val_tokens_per_byte(self) -> float:
        """Tokens per UTF-8 byte of the validation text: turns val/loss into bits per byte."""
        val = self.meta["splits"]["val"]
        return val["tokens"] / val["bytes"]

    @property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_spec(self.meta["tokenizer"])

    def train_dataloader(self):
        trainer = self.trainer
        # Resuming restores global_step before the dataloader is built, so the stream restarts where it stopped.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        dataset = RandomWindows(self.data_dir / "train.bin", self.meta["dtype"], self.block_size, self.batch_size,
                                self.seed, rank, world_size, start)
        return self.loader(dataset)

    def val_dataloader(self):
        dataset = FixedWindows(
            self.data_dir / "val.bin", self.meta["dtype"], self.block_size, self.batch_size, self.val_batches
        )
        return self.loader(dataset)

    def loader(self, dataset):
        # Our own generator keeps DataLoader from drawing on the global RNG, which resume restores.
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
            persistent_workers=self.num_workers > 0,
        )
