"""The LightningDataModules: over a data set's memory-mapped token bins, or a synthetic task's examples (lmzoo.data
builds and reads both)."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmzoo.data import DataConfig, prepare, read_meta
from lmzoo.data.bins import BinsMeta, check_block_size
from lmzoo.data.tasks import IGNORE, EpochBatches, FixedBatches, TaskConfig, task_splits
from lmzoo.data.windows import FixedWindows, RandomWindows
from lmzoo.errors import UserError
from lmzoo.inference.evaluation import answers_result, split_result
from lmzoo.models import LanguageModel


class BatchesModule(L.LightningDataModule):
    """What both data modules share: how a batch stream restarts where a resumed run stopped, and the loaders."""

    # Whether the targets are answers at some positions only, which val/accuracy scores (lmzoo.data.tasks).
    scores_answers = False
    # The share of the training targets the loss scores: every position of a text.
    scored_share = 1.0

    def stream_start(self) -> tuple[int, int, int]:
        """The training stream's first batch, this process's rank and the world size."""
        trainer = self.trainer
        # Resuming restores global_step before the dataloader is built, so the stream restarts where it stopped.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return start, rank, world_size

    def loader(self, dataset):
        # Our own generator keeps DataLoader from drawing on the global RNG, which resume restores.
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.config.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
            persistent_workers=self.config.num_workers > 0,
        )


class TokenDataModule(BatchesModule):
    def __init__(self, config: DataConfig):
        super().__init__()
        self.config = config
        self.meta: BinsMeta | None = None

    def prepare_data(self):
        self.meta = prepare(self.config)

    def setup(self, stage: str | None = None):
        if self.meta is None:
            self.meta = read_meta(self.config.data_dir)
        if self.meta is None:
            raise UserError(f"no prepared data in {self.config.data_dir}; "
                            f"run python -m lmzoo.prepare data={self.config.name}")
        check_block_size(self.meta.splits, self.config.block_size)

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    @property
    def tokenizer(self) -> dict:
        return self.meta.tokenizer

    @property
    def val_tokens_per_byte(self) -> float:
        """Tokens per UTF-8 byte of the validation text: turns val/loss into bits per byte."""
        return self.meta.val_tokens_per_byte

    def train_dataloader(self):
        c = self.config
        start, rank, world_size = self.stream_start()
        dataset = RandomWindows(c.data_dir / "train.bin", self.meta.dtype, c.block_size, c.batch_size, c.seed,
                                rank, world_size, start)
        return self.loader(dataset)

    def val_dataloader(self):
        c = self.config
        return self.loader(FixedWindows(c.data_dir / "val.bin", self.meta.dtype, c.block_size, c.batch_size,
                                        c.val_batches))

    def test_result(self, model: LanguageModel) -> dict:
        """The test split's loss and bits per byte of `model`, over every token of it (as python -m lmzoo.evaluate
        split=test reports them): a run's report, read once at its end; nothing that selects reads it."""
        result = split_result(model, self.config.data_dir, self.meta, "test", self.config.batch_size)
        return {"test_loss": result["loss"], "test_bpb": result["bits_per_byte"]}


class TaskDataModule(BatchesModule):
    """A synthetic task's examples, generated in memory from the data seed (lmzoo.data.tasks.task_splits)."""

    scores_answers = True
    # Text has bytes, a task's ids do not: no bits per byte.
    val_tokens_per_byte = None

    def __init__(self, config: TaskConfig):
        super().__init__()
        self.config = config
        self.splits = None

    def prepare_data(self):
        # Here, before the run writes anything, so that a task with too few distinct examples is refused first.
        if self.splits is None:
            self.splits = task_splits(self.config)

    def setup(self, stage: str | None = None):
        self.prepare_data()

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def scored_share(self) -> float:
        """The share of the training examples' positions that hold an answer."""
        targets = self.splits["train"][1]
        return float((targets != IGNORE).mean())

    @property
    def tokenizer(self) -> dict:
        return self.config.tokenizer

    def train_dataloader(self):
        start, rank, world_size = self.stream_start()
        return self.loader(EpochBatches(*self.splits["train"], self.config.batch_size, self.config.seed, rank,
                                        world_size, start))

    def val_dataloader(self):
        return self.loader(FixedBatches(*self.splits["val"], self.config.batch_size))

    def test_result(self, model: LanguageModel) -> dict:
        """The test examples' loss and accuracy of `model` (over every answer, as val/loss and val/accuracy weigh
        them): a run's report, read once at its end; nothing that selects reads it."""
        result = answers_result(model, *self.splits["test"], self.config.batch_size)
        return {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}


def data_module(config: DataConfig | TaskConfig) -> TokenDataModule | TaskDataModule:
    """The data module of a data config: token bins of a text, or a synthetic task's examples."""
    return TaskDataModule(config) if isinstance(config, TaskConfig) else TokenDataModule(config)
