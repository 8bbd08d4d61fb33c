"""The one loader: an lmzoo checkpoint, an lmzoo folder, or a Hugging Face folder, to a model ready to use.

A checkpoint holds the architecture, its hyper-parameters and the tokenizer, so no training config or
data is needed. Damaged weights (changed bytes, NaN or inf) are refused. It only imports downwards: from
the format modules beside it and from models and data.
"""

from pathlib import Path

import torch

from lmzoo.checkpoints.ckpt import model_state, read_checkpoint
from lmzoo.checkpoints.folder import is_lmzoo_folder, load_folder
from lmzoo.checkpoints.hf import is_hf_source, load_hf
from lmzoo.checkpoints.integrity import check_finite, weights_sha256
from lmzoo.checkpoints.record import ModelRecord
from lmzoo.data.tokenizer import Tokenizer, describe_tokenizer, tokenizer_from_spec
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel
from lmzoo.models.lora import LoRA, merge


def load_model(source: str | Path, device: str | torch.device = "cpu", diverged: bool = False
               ) -> tuple[LanguageModel, Tokenizer, ModelRecord]:
    """The model (in eval mode, on `device`), its tokenizer, and its lmzoo record. A checkpoint saved after its
    run diverged is refused, unless `diverged` (describe shows it as such).

    `source` is an lmzoo checkpoint, a folder written by python -m lmzoo.export, or GPT-2 from Hugging Face
    (`hf:NAME` or a local folder holding its config.json). The record also gives `global_step` and
    `best_val_loss` (None where the weights do not say, with `origin` naming where they came from).
    """
    device = resolve_device(device)
    model, record = build_from(str(source))
    if not diverged:
        check_not_diverged(record, source)
    return model.to(device).eval(), tokenizer_from_spec(record.tokenizer), record


def check_not_diverged(record: ModelRecord, source) -> None:
    if record.diverged_at is not None:
        raise UserError(f"{source} was saved after its run diverged at step {record.diverged_at} (val/loss NaN or inf): "
                        "its predictions are not numbers; use a checkpoint saved before, or train again with a lower "
                        "optim.lr")


def resolve_device(name: str | torch.device) -> torch.device:
    """A torch device by name; `auto` is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device={name} is not here: torch sees {torch.cuda.device_count()} CUDA GPUs; use "
                        "device=auto or device=cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} needs a CUDA GPU, and torch sees none; use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={name} is not one lmzoo runs on; use auto, cpu, cuda or cuda:N")
    return device


def build_from(source: str) -> tuple[LanguageModel, ModelRecord]:
    model, record = build_unchecked(source)
    check_finite(model.state_dict(), source)
    return model, record


def build_unchecked(source: str) -> tuple[LanguageModel, ModelRecord]:
    if is_hf_source(source):
        return load_hf(source)
    if is_lmzoo_folder(source):
        return load_folder(source)
    checkpoint = read_checkpoint(source)
    record = ModelRecord.read(checkpoint["lmzoo"], global_step=checkpoint.get("global_step", 0))
    model = record.build_model()
    finetune = record.finetune
    if finetune:
        # A fine-tuned checkpoint holds only its adapters; the frozen weights come from the base it names.
        base_source = finetune["base"]
        if not (base_source.startswith("hf:") or Path(base_source).exists()):
            raise UserError(f"{source} holds LoRA adapters for the base {base_source}, which is missing; "
                            "put the base back at that path")
        base = merge(build_from(base_source)[0]).state_dict()
        # Another model of the same shape at that path would load, and give other logits.
        if finetune.get("base_sha256") and weights_sha256(base) != finetune["base_sha256"]:
            raise UserError(f"{source} holds LoRA adapters for the base {base_source}, but the weights there are not "
                            "that base's (their sha256 differs from the one recorded); put the original base back at "
                            "that path")
        model.load_state_dict(base)
        LoRA(finetune["r"], finetune["alpha"], finetune["targets"], finetune["dropout"]).apply(model)
    try:
        model.load_state_dict(model_state(checkpoint), strict=not finetune)
    except RuntimeError as error:
        # Missing or unexpected keys, or shapes that are not the recorded architecture's.
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"{source}'s weights do not fit its recorded architecture ({detail[:300]}); it was edited "
                        "or damaged: use another checkpoint") from None
    return model, record


def model_card(model: LanguageModel, record: ModelRecord) -> str:
    """One line that says what a checkpoint is: architecture, size, tokenizer, training so far (or where the
    weights came from, when they do not say)."""
    config = record.config
    shape = ", ".join(f"{key} {config[key]}" for key in ("n_layer", "n_head", "n_embd", "block_size") if key in config)
    parameters = sum(p.numel() for p in model.parameters())
    steps, best = record.global_step, record.best_val_loss
    if steps is None:
        trained = f"weights from {record.origin}"
    else:
        trained = f"{steps:,} steps | best val loss " + ("-" if best is None or best == float("inf") else f"{best:.4f}")
        if record.diverged_at is not None:
            trained += f" | diverged at step {record.diverged_at}"
    return (f"{type(model).__name__} ({shape}) | {parameters / 1e6:.2f}M parameters | "
            f"{describe_tokenizer(record.tokenizer)} | {trained}")
