"""Lightning's checkpoint writes, made atomic: `last.ckpt` is always the previous complete checkpoint or the
new complete one, whatever kill or full disk comes in between."""

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmzoo.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_write(path, "free disk space or choose a writable run folder with hydra.run.dir=PATH") as file:
            torch.save(checkpoint, file)
