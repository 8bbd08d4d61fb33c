"""Loading self-describing checkpoints: architecture, hyper-parameters and tokenizer travel with the weights."""

import importlib
from pathlib import Path

import torch

from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel
from lmzoo.tokenizers import Tokenizer, tokenizer_from_spec


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; pass ckpt=PATH to a .ckpt file from a run's checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated") from None
    if not isinstance(checkpoint, dict) or "lmzoo" not in checkpoint:
        raise UserError(f"{path} is not an lmzoo checkpoint; pass one written by python -m lmzoo.train")
    return checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[LanguageModel, Tokenizer, dict]:
    """The model (in eval mode, on `device`), its tokenizer, and the checkpoint's lmzoo record."""
    checkpoint = read_checkpoint(path)
    info = checkpoint["lmzoo"]
    module_name, class_name = info["target"].rsplit(".", 1)
    model = getattr(importlib.import_module(module_name), class_name)(**info["config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.tokenizer_spec = info["tokenizer"]
    model.best_val_loss = info["best_val_loss"]
    info = {**info, "global_step": checkpoint.get("global_step", 0)}
    return model.to(device).eval(), tokenizer_from_spec(info["tokenizer"]), info


def model_card(model: LanguageModel, info: dict) -> str:
    """One line that says what a checkpoint is: architecture, size, tokenizer, training so far."""
    config = info["config"]
    shape = ", ".join(f"{key} {config[key]}" for key in ("n_layer", "n_head", "n_embd", "block_size") if key in config)
    parameters = sum(p.numel() for p in model.parameters())
    best = info["best_val_loss"]
    return (
        f"{type(model).__name__} ({shape}) | {parameters / 1e6:.2f}M parameters | {describe_tokenizer(info['tokenizer'])}"
        f" | {info['global_step']:,} steps | best val loss {best:.4f}"
    )


def describe_tokenizer(spec: dict | None) -> str:
    if spec is None:
        return "no tokenizer"
    if spec["kind"] == "char":
        return f"char tokenizer ({len(spec['chars'])} symbols)"
    return f"{spec['kind']} {spec.get('name', '')}".strip()
