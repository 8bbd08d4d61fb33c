"""Checkpoints written atomically: a kill or a full disk during a save never leaves a half-written file
under a checkpoint's name, so `last.ckpt` is always the previous complete one or the new complete one."""

import contextlib
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmzoo.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the same folder, fsyncs it, then renames it over the final name."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        temporary = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            sync_folder(path.parent)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise UserError(f"cannot write checkpoint {path} ({error.strerror or error}); free disk space or "
                            "choose a writable run folder with hydra.run.dir=PATH") from None


def sync_folder(folder: Path) -> None:
    """Makes a rename in `folder` survive a power cut, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
