"""Damaged weights are refused: a checkpoint whose bytes changed after it was written, or that holds NaN or inf.

A checkpoint file is a zip archive that torch writes with a CRC-32 of every member, so checking those CRCs
catches changed bytes in any checkpoint, this release's or an older one's, at no cost when saving (a digest
of the tensors would have to be computed at every save, and older checkpoints have none). safetensors files
carry no checksum, so lmzoo's folders record the sha256 of theirs.
"""

import hashlib
import zipfile
from pathlib import Path

import torch

from lmzoo.errors import UserError
from lmzoo.files import sha256_of

ANOTHER = "use another checkpoint (the run's best.ckpt or last.ckpt, or a copy)"


def check_archive(path: Path) -> None:
    """Refuse a checkpoint file whose members fail their CRCs; one that is no zip at all is left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        damaged = f"its layout ({error})"
    if damaged is not None:
        raise UserError(f"{path} is damaged: {damaged} does not match the checksum written with it; {ANOTHER}")


def check_digest(path: Path, expected: str | None) -> None:
    """Refuse a weights file whose sha256 is not the one recorded beside it (None: nothing recorded)."""
    if expected is not None and sha256_of(path) != expected:
        raise UserError(f"{path} is damaged: its sha256 is not the one recorded in lmzoo.json; export it again")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's names and tensor bytes, in name order: what identifies a LoRA base."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class NonFiniteWeights(UserError):
    """Weights holding NaN or inf; `first` names the first such tensor."""

    def __init__(self, source, first: str):
        super().__init__(f"{source} holds non-finite weights (NaN or inf in {first}); {ANOTHER}")
        self.first = first


def check_finite(state: dict[str, torch.Tensor], source) -> None:
    """Refuse weights holding NaN or inf: they come from a diverged run, or from damage the checks above miss."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteWeights(source, name)
