"""The LightningDataModule over a data set's memory-mapped token bins (lmzoo.data builds and reads them)."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmzoo.data import DataConfig, prepare, read_meta
from lmzoo.data.bins import BinsMeta, check_block_size
from lmzoo.data.windows import FixedWindows, RandomWindows
from lmzoo.errors import UserError
from lmzoo.inference.evaluation import split_result
from lmzoo.models import LanguageModel


class TokenDataModule(L.LightningDataModule):
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
    def val_tokens_per_byte(self) -> float:
        """Tokens per UTF-8 byte of the validation text: turns val/loss into bits per byte."""
        return self.meta.val_tokens_per_byte

    def train_dataloader(self):
        trainer, c = self.trainer, self.config
        # Resuming restores global_step before the dataloader is built, so the stream restarts where it stopped.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
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
