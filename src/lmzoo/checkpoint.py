"""Loading self-describing checkpoints: architecture, hyper-parameters and tokenizer travel with the weights."""

import importlib
import json
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
    return checkpoint


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
    if (Path(source).expanduser() / FOLDER_RECORD).is_file():
        return load_folder(Path(source).expanduser())
    checkpoint = read_checkpoint(source)
    info = checkpoint["lmzoo"]
    model = build_architecture(info)
    if info.get("finetune"):
        # A fine-tuned checkpoint holds only its adapters; the frozen weights come from the base it names.
        base, _ = build_from(info["finetune"]["base"])
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


FOLDER_RECORD = "lmzoo.json"


def save_folder(model: LanguageModel, out: Path) -> None:
    """Write `model` as model.safetensors plus lmzoo.json (architecture, config, tokenizer)."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors"))
    record = {"version": __version__, "target": f"{type(model).__module__}.{type(model).__qualname__}",
              "config": model.model_config(), "tokenizer": model.tokenizer_spec}
    (out / FOLDER_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def load_folder(folder: Path) -> tuple[LanguageModel, dict]:
    from safetensors.torch import load_model as load_weights

    info = json.loads((folder / FOLDER_RECORD).read_text())
    model = build_architecture(info)
    load_weights(model, str(folder / "model.safetensors"))
    return model, {**info, "best_val_loss": float("inf"), "global_step": 0}
