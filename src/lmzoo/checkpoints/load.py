"""The one loader: an lmzoo checkpoint, an lmzoo folder, or GPT-2 from Hugging Face, to a model ready to use.

A checkpoint holds the architecture, its hyper-parameters and the tokenizer, so no training config or
data is needed. It only imports downwards: from the format modules beside it and from models and data.
"""

from pathlib import Path

import torch

from lmzoo.checkpoints.ckpt import model_state, read_checkpoint
from lmzoo.checkpoints.folder import is_lmzoo_folder, load_folder
from lmzoo.checkpoints.gpt2 import is_hf_source, load_gpt2
from lmzoo.checkpoints.record import build_model
from lmzoo.data.tokenizer import Tokenizer, describe_tokenizer, tokenizer_from_spec
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel
from lmzoo.models.lora import LoRA, merge


def load_model(source: str | Path, device: str | torch.device = "cpu") -> tuple[LanguageModel, Tokenizer, dict]:
    """The model (in eval mode, on `device`), its tokenizer, and its lmzoo record.

    `source` is an lmzoo checkpoint, a folder written by python -m lmzoo.export, or GPT-2 from Hugging Face
    (`hf:NAME` or a local folder holding its config.json). The record also gives `global_step` and
    `best_val_loss`.
    """
    model, info = build_from(str(source))
    return model.to(device).eval(), tokenizer_from_spec(info["tokenizer"]), info


def build_from(source: str) -> tuple[LanguageModel, dict]:
    if is_hf_source(source):
        return load_gpt2(source)
    if is_lmzoo_folder(source):
        return load_folder(source)
    checkpoint = read_checkpoint(source)
    info = checkpoint["lmzoo"]
    model = build_model(info)
    finetune = info.get("finetune")
    if finetune:
        # A fine-tuned checkpoint holds only its adapters; the frozen weights come from the base it names.
        base_source = finetune["base"]
        if not (base_source.startswith("hf:") or Path(base_source).exists()):
            raise UserError(f"{source} holds LoRA adapters for the base {base_source}, which is missing; "
                            "put the base back at that path")
        base, _ = build_from(base_source)
        model.load_state_dict(merge(base).state_dict())
        LoRA(finetune["r"], finetune["alpha"], finetune["targets"], finetune["dropout"]).apply(model)
    model.load_state_dict(model_state(checkpoint), strict=not finetune)
    return model, {**info, "global_step": checkpoint.get("global_step", 0)}


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
