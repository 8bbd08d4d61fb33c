"""Loading self-describing checkpoints: architecture, hyper-parameters and tokenizer travel with the weights."""

import importlib
from pathlib import Path

import torch

from lmzoo import __version__, lora
from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel
from lmzoo.tokenizers import Tokenizer, tokenizer_from_spec


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; pass a .ckpt file from a run's checkpoints/, "
                        "a folder written by python -m lmzoo.export, or hf:NAME")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated") from None
    if not isinstance(checkpoint, dict) or "lmzoo" not in checkpoint:
        raise UserError(f"{path} is not an lmzoo checkpoint; pass one written by python -m lmzoo.train")
    written_by = checkpoint["lmzoo"].get("version", "unknown")
    if not same_release(written_by, __version__):
        raise UserError(f"{path} was written by lmzoo {written_by}, which this lmzoo {__version__} cannot read; "
                        f"use lmzoo {written_by} (pip install lmzoo=={written_by}) or retrain")
    return checkpoint


def same_release(version: str, other: str) -> bool:
    """Checkpoints keep their format within a major.minor release."""
    return version.split(".")[:2] == other.split(".")[:2]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[LanguageModel, Tokenizer, dict]:
    """The model (in eval mode, on `device`), its tokenizer, and its lmzoo record.

    `path` is an lmzoo checkpoint, a folder written by python -m lmzoo.export, or GPT-2 from Hugging Face
    (`hf:NAME` or a local folder holding its config.json).
    """
    model, info = build_from(str(path))
    return model.to(device).eval(), tokenizer_from_spec(info["tokenizer"]), info


def build_from(source: str) -> tuple[LanguageModel, dict]:
    # interop imports this module to export checkpoints, so it is imported here, when needed.
    from lmzoo import interop

    if interop.is_hf_source(source):
        return interop.load_gpt2(source)
    if interop.is_lmzoo_folder(source):
        return interop.load_folder(source)
    checkpoint = read_checkpoint(source)
    info = checkpoint["lmzoo"]
    model = build_architecture(info)
    if info.get("finetune"):
        # A fine-tuned checkpoint holds only its adapters; the frozen weights come from the base it names.
        base_source = info["finetune"]["base"]
        if not (base_source.startswith("hf:") or Path(base_source).exists()):
            raise UserError(f"{source} holds LoRA adapters for the base {base_source}, which is missing; "
                            "put the base back at that path")
        base, _ = build_from(base_source)
        model.load_state_dict(lora.merge(base).state_dict())
        lora.from_spec(info["finetune"]).apply(model)
        model.finetune = info["finetune"]
    model.load_state_dict(checkpoint["state_dict"], strict=not info.get("finetune"))
    model.best_val_loss = info["best_val_loss"]
    return model, {**info, "global_step": checkpoint.get("global_step", 0)}


def build_architecture(info: dict) -> LanguageModel:
    module_name, class_name = info["target"].rsplit(".", 1)
    model = getattr(importlib.import_module(module_name), class_name)(**info["config"])
    model.tokenizer_spec = info["tokenizer"]
    return model


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
