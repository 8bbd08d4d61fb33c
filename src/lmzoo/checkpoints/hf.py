"""Hugging Face folders in: GPT-2 (`hf:NAME` from the Hub, or a local folder holding its config.json), and the
folders `python -m lmzoo.export` writes, whose lmzoo.json gives their exact config and tokenizer.

The model is lmzoo's transformer; the layout its mixers declare (lmzoo.models.hf_layout.HFLayout, the mixers' `hf`)
renames, joins and splits the other class's weights into lmzoo's: GPT-2's Conv1D weights transposed into
nn.Linear's, Llama's separate q/k/v and gate/up projections joined into lmzoo's fused ones, Mamba-2's renamed,
Qwen3-Next's per-head q/k/v/z regrouped. Loading needs only safetensors (and huggingface_hub for `hf:NAME`),
imported inside the functions.
"""

import dataclasses
import json
from pathlib import Path

import torch

from lmzoo.checkpoints.folder import FOLDER_RECORD, WEIGHTS, read_record, safetensors_torch
from lmzoo.checkpoints.record import ModelRecord, architecture_record
from lmzoo.errors import UserError
from lmzoo.models import Transformer, TransformerConfig, preset_config

GPT2_VOCAB_SIZE = 50257


def is_hf_source(source: str) -> bool:
    """`hf:NAME`, or a folder holding a Hugging Face config.json."""
    return source.startswith("hf:") or (Path(source).expanduser() / "config.json").is_file()


def load_hf(source: str) -> tuple[Transformer, ModelRecord]:
    """The model of a Hugging Face folder (or `hf:NAME`) and its lmzoo record."""
    folder = fetch(source)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, OSError) as error:
        raise UserError(f"{folder / 'config.json'} does not read as JSON ({error}); pass a folder whose config.json "
                        "transformers wrote") from None
    if not isinstance(config, dict):
        raise UserError(f"{folder / 'config.json'} holds {type(config).__name__}, not a model's config; pass a folder "
                        "whose config.json transformers wrote")
    record = read_record(folder) if (folder / FOLDER_RECORD).is_file() else None
    kind = config.get("model_type")
    if record is not None:
        model = record.build_model()
    elif kind == "gpt2":
        model = gpt2_shape(config, source).build()
    else:
        model = None
    layout = model.hf_layout() if isinstance(model, Transformer) else None
    if layout is None or kind not in layout.model_types:
        raise UserError(f"{source} holds a {kind!r} model; lmzoo loads GPT-2 weights, and the folders "
                        "python -m lmzoo.export writes (with their lmzoo.json)")
    model.load_state_dict(layout.state_dict(read_weights(folder), model, source))
    if record:
        return model, dataclasses.replace(record, origin=source)
    return model, ModelRecord(**architecture_record(model), tokenizer={"kind": "tiktoken", "name": "gpt2"}, origin=source)


def gpt2_shape(config: dict, source: str) -> TransformerConfig:
    """lmzoo's config for a Hugging Face GPT-2 config, which must be GPT-2's own shape."""
    if config["vocab_size"] != GPT2_VOCAB_SIZE or config.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{source} is not GPT-2's shape (vocabulary {GPT2_VOCAB_SIZE}, gelu_new); it cannot load")
    if config.get("n_inner") not in (None, 4 * config["n_embd"]) or config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise UserError(f"{source} changes GPT-2's MLP width or LayerNorm epsilon, which lmzoo's gpt does not")
    return preset_config("gpt", vocab_size=GPT2_VOCAB_SIZE, block_size=config["n_positions"], n_layer=config["n_layer"],
                         n_head=config["n_head"], n_embd=config["n_embd"],
                         tie_embeddings=config.get("tie_word_embeddings", True))


def fetch(source: str) -> Path:
    if not source.startswith("hf:"):
        return Path(source).expanduser()
    name = source.removeprefix("hf:")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["config.json", WEIGHTS, FOLDER_RECORD]))
    except Exception as error:
        raise UserError(
            f"could not fetch {name!r} from the Hugging Face Hub ({type(error).__name__}); offline, pass a local "
            "folder holding its config.json and model.safetensors instead of hf:NAME"
        ) from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        if (folder / WEIGHTS).is_file():
            return safetensors_torch().load_file(folder / WEIGHTS)
        if (folder / "pytorch_model.bin").is_file():
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"the weights in {folder} do not load ({type(error).__name__}); they may be damaged") from None
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin; pass a folder holding GPT-2's weights")
