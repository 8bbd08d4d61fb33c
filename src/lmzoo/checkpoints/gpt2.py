"""GPT-2 weights in from Hugging Face: `hf:NAME` from the Hub, or a local folder holding its config.json.

The model is lmzoo's transformer in GPT-2's shape; Conv1D weights are transposed into nn.Linear's layout.
Loading needs only safetensors (and huggingface_hub for `hf:NAME`), imported inside the functions.
"""

import json
from pathlib import Path

import torch

from lmzoo.checkpoints.folder import safetensors_torch
from lmzoo.checkpoints.record import architecture_record
from lmzoo.errors import UserError
from lmzoo.models import GPT2_CHOICES, Transformer, TransformerConfig

GPT2_VOCAB_SIZE = 50257
# GPT-2 stores these as Conv1D (in, out) matrices; nn.Linear holds (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_hf_source(source: str) -> bool:
    """`hf:NAME`, or a folder holding a Hugging Face config.json."""
    return source.startswith("hf:") or (Path(source).expanduser() / "config.json").is_file()


def load_gpt2(source: str) -> tuple[Transformer, dict]:
    """GPT-2 from `hf:NAME` (gpt2, gpt2-medium, ...) or a local folder, and its lmzoo record."""
    folder = fetch(source)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise UserError(f"{source} holds a {config.get('model_type')!r} model; only GPT-2 weights load into lmzoo")
    if config["vocab_size"] != GPT2_VOCAB_SIZE or config.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{source} is not GPT-2's shape (vocabulary {GPT2_VOCAB_SIZE}, gelu_new); it cannot load")
    if config.get("n_inner") not in (None, 4 * config["n_embd"]) or config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise UserError(f"{source} changes GPT-2's MLP width or LayerNorm epsilon, which lmzoo's gpt does not")
    model = TransformerConfig(vocab_size=GPT2_VOCAB_SIZE, block_size=config["n_positions"], n_layer=config["n_layer"],
                              n_head=config["n_head"], n_embd=config["n_embd"], **GPT2_CHOICES).build()
    model.load_state_dict(gpt2_state_dict(read_weights(folder), model, source))
    info = {**architecture_record(model), "tokenizer": {"kind": "tiktoken", "name": "gpt2"},
            "best_val_loss": float("inf"), "global_step": 0}
    return model, info


def fetch(source: str) -> Path:
    if not source.startswith("hf:"):
        return Path(source).expanduser()
    name = source.removeprefix("hf:")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors"]))
    except Exception as error:
        raise UserError(
            f"could not fetch {name!r} from the Hugging Face Hub ({type(error).__name__}); offline, pass a local "
            "folder holding its config.json and model.safetensors instead of hf:NAME"
        ) from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return safetensors_torch().load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin; pass a folder holding GPT-2's weights")


def gpt2_state_dict(weights: dict[str, torch.Tensor], model: Transformer, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights renamed, transposed and padded into `model`'s state dict."""
    expected = model.state_dict()
    state = {}
    for name, tensor in weights.items():
        # The causal-mask buffers (attn.bias, attn.masked_bias) and the tied head carry no weights of their own.
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        key = "transformer." + name.removeprefix("transformer.")
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.T
        if key == "transformer.wte.weight":
            tensor = torch.cat([tensor, tensor.new_zeros(expected[key].size(0) - tensor.size(0), tensor.size(1))])
        state[key] = tensor
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    wrong = sorted(key for key in expected if key not in state or state[key].shape != expected[key].shape)
    if wrong:
        raise UserError(f"{source} does not match its config.json: {wrong[0]} is missing or misshapen")
    return state
