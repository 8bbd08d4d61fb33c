"""lmzoo's training checkpoints: Lightning's checkpoint file with the lmzoo record under "lmzoo".

The model's weights sit in the state dict under the prefix "model." (the Lightning module holds the
model as `.model`); lmzoo 0.1 wrote them without it.
"""

from pathlib import Path

import torch

from lmzoo.checkpoints.integrity import check_archive, check_finite
from lmzoo.checkpoints.record import check_readable, upgrade_record
from lmzoo.errors import UserError

PREFIX = "model."


# What the commands that load a model take for one (generate, evaluate, describe, export, init_from).
MODEL_SOURCES = "a .ckpt file from a run's checkpoints/, a folder written by python -m lmzoo.export, or hf:NAME"


def checkpoint_file(path: str | Path, takes: str = MODEL_SOURCES) -> Path:
    """`path` as a checkpoint file that exists; a missing path or a folder is a UserError saying what to pass, from
    what the command `takes`."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = path / "checkpoints" / "best.ckpt"
        hint = f"pass one of its checkpoints, such as {inside}" if inside.is_file() else f"pass {takes}"
        raise UserError(f"{path} is a folder, not a checkpoint; {hint}")
    if not path.is_file():
        state = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"checkpoint {str(path)!r} {state}; pass {takes}")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file, checked for damage and upgraded in memory to this release's layout."""
    path = checkpoint_file(path)
    check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated") from None
    if not isinstance(checkpoint, dict) or "lmzoo" not in checkpoint:
        raise UserError(f"{path} is not an lmzoo checkpoint; pass one written by python -m lmzoo.train")
    check_readable(checkpoint["lmzoo"].get("version", "unknown"), path)
    upgrade_checkpoint(checkpoint)
    check_finite(checkpoint["state_dict"], path)
    return checkpoint


def upgrade_checkpoint(checkpoint: dict) -> None:
    """Bring a checkpoint of lmzoo 0.1 to this release's layout, in place (also as Lightning resumes it)."""
    if "target" in checkpoint["lmzoo"]:
        checkpoint["state_dict"] = {PREFIX + name: tensor for name, tensor in checkpoint["state_dict"].items()}
    checkpoint["lmzoo"] = upgrade_record(checkpoint["lmzoo"])


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's own state dict, as `LanguageModel.load_state_dict` takes it."""
    return {name.removeprefix(PREFIX): tensor for name, tensor in checkpoint["state_dict"].items()
            if name.startswith(PREFIX)}
