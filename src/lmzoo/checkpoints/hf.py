"""Hugging Face folders in: GPT-2 (`hf:NAME` from the Hub, or a local folder holding its config.json), and the
GPT-2, Llama, Qwen2, Qwen3, DeepSeek-V3, DiffLlama, Mamba-2 and Qwen3-Next folders `python -m lmzoo.export`
writes, whose lmzoo.json gives their exact config and tokenizer.

The model is lmzoo's transformer: GPT-2's Conv1D weights are transposed into nn.Linear's layout, Llama's
separate q/k/v and gate/up projections joined into lmzoo's fused ones (llama_layout), Mamba-2's renamed
(mamba2_layout), Qwen3-Next's per-head q/k/v/z regrouped (qwen3_next_layout). Loading needs only safetensors
(and huggingface_hub for `hf:NAME`), imported inside the functions.
"""

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from lmzoo.checkpoints.folder import FOLDER_RECORD, WEIGHTS, read_record, safetensors_torch
from lmzoo.checkpoints.record import ModelRecord, architecture_record
from lmzoo.errors import UserError
from lmzoo.models import Transformer, TransformerConfig, preset_config
from lmzoo.models.blocks import DIFFERENTIAL_LAMBDAS, LatentAttention

GPT2_VOCAB_SIZE = 50257
# The model types of Llama's layout that lmzoo exports, and loads back with their lmzoo.json.
LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "deepseek_v3", "diffllama")
# GPT-2 stores these as Conv1D (in, out) matrices; nn.Linear holds (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The embedding and head rows past the true vocabulary (lmzoo pads them for speed; Hugging Face does not).
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")


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
    if kind == "gpt2":
        model = record.build_model() if record else gpt2_shape(config, source).build()
        state = gpt2_state_dict(read_weights(folder), model, source)
    elif kind in LLAMA_FAMILY and record:
        model = record.build_model()
        state = llama_state_dict(read_weights(folder), model, source)
    elif kind == "mamba2" and record:
        model = record.build_model()
        state = llama_state_dict(read_weights(folder), model, source, mamba2_layout)
    elif kind == "qwen3_next" and record:
        model = record.build_model()
        state = qwen3_next_state_dict(read_weights(folder), model, source)
    else:
        raise UserError(f"{source} holds a {kind!r} model; lmzoo loads GPT-2 weights, and the Llama, Qwen2, Qwen3, "
                        "DeepSeek-V3, DiffLlama, Mamba-2 and Qwen3-Next folders python -m lmzoo.export writes (with "
                        "their lmzoo.json)")
    model.load_state_dict(state)
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


def gpt2_state_dict(weights: dict[str, torch.Tensor], model: Transformer, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights renamed, transposed and padded into `model`'s state dict."""
    expected = model.state_dict()
    state = {}
    tied = model.config.tie_embeddings
    for name, tensor in weights.items():
        # The causal-mask buffers (attn.bias, attn.masked_bias) and a tied head carry no weights of their own.
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (tied and name == "lm_head.weight"):
            continue
        key = name if name == "lm_head.weight" else "transformer." + name.removeprefix("transformer.")
        # A model without biases was exported with zero ones (same function).
        if key not in expected and key.endswith(".bias") and not tensor.any():
            continue
        state[key] = tensor.T if key.endswith(CONV1D_WEIGHTS) else tensor
    state = padded_vocabulary(state, expected)
    if tied and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return checked(state, expected, source)


def llama_layout(model: Transformer) -> list[tuple[str, list[str], list[int] | None]]:
    """Each lmzoo weight, the weights of Llama's layout it is made of (Qwen2, Qwen3, DiffLlama and DeepSeek-V3
    share it, each with what its attention adds), and their rows in it (None: all of them)."""
    layout = [("transformer.wte.weight", ["model.embed_tokens.weight"], None),
              ("transformer.ln_f.weight", ["model.norm.weight"], None)]
    if not model.config.tie_embeddings:
        layout.append(("lm_head.weight", ["lm_head.weight"], None))
    for i, block in enumerate(model.transformer.h):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        width = block.mlp.c_proj.in_features
        layout += [
            (ours + "ln_1.weight", [theirs + "input_layernorm.weight"], None),
            *attention_layout(block.attn, ours + "attn.", theirs + "self_attn."),
            (ours + "attn.c_proj.weight", [theirs + "self_attn.o_proj.weight"], None),
            (ours + "ln_2.weight", [theirs + "post_attention_layernorm.weight"], None),
            # c_fc computes [gate, up] in one matmul; Llama has a projection for each.
            (ours + "mlp.c_fc.weight", [theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight"], [width, width]),
            (ours + "mlp.c_proj.weight", [theirs + "mlp.down_proj.weight"], None),
        ]
    return layout


def attention_layout(a, ours: str, theirs: str) -> list[tuple[str, list[str], list[int] | None]]:
    """The input side of an attention's weights in Llama's layout: q, k, v (with Qwen3's QK-norm and DiffLlama's
    lambdas), or DeepSeek-V3's latent projections."""
    if isinstance(a, LatentAttention):
        query = ([(ours + "c_q.weight", [theirs + "q_proj.weight"], None)] if isinstance(a.c_q, nn.Linear) else
                 [(ours + f"c_q.{index}.weight", [theirs + name], None)
                  for index, name in enumerate(("q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"))])
        return [*query, (ours + "c_kv_a.weight", [theirs + "kv_a_proj_with_mqa.weight"], None),
                (ours + "kv_norm.weight", [theirs + "kv_a_layernorm.weight"], None),
                (ours + "c_kv_b.weight", [theirs + "kv_b_proj.weight"], None)]
    # c_attn computes [q, k, v] in one matmul; Llama has a projection for each.
    qkv = [a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim]
    layout = [(ours + "c_attn.weight", [theirs + f"{p}_proj.weight" for p in "qkv"], qkv)]
    if a.qk_norm:
        layout += [(ours + f"{p}_norm.weight", [theirs + f"{p}_norm.weight"], None) for p in "qk"]
    if a.lambda_init is not None:
        layout += [(ours + name, [theirs + name], None) for name in DIFFERENTIAL_LAMBDAS]
    return layout


def same_names(ours: str, theirs: str, names: list[str]) -> list[tuple[str, list[str], list[int] | None]]:
    return [(ours + name, [theirs + name], None) for name in names]


def mamba2_layout(model: Transformer) -> list[tuple[str, list[str], list[int] | None]]:
    """Each lmzoo weight of a Mamba-2 model and the Mamba2ForCausalLM weight it is."""
    layout = [("transformer.wte.weight", ["backbone.embeddings.weight"], None),
              ("transformer.ln_f.weight", ["backbone.norm_f.weight"], None)]
    if not model.config.tie_embeddings:
        layout.append(("lm_head.weight", ["lm_head.weight"], None))
    for i in range(len(model.transformer.h)):
        ours, theirs = f"transformer.h.{i}.", f"backbone.layers.{i}."
        layout += [(ours + "ln_1.weight", [theirs + "norm.weight"], None),
                   (ours + "attn.c_proj.weight", [theirs + "mixer.out_proj.weight"], None),
                   *same_names(ours + "attn.", theirs + "mixer.", ["in_proj.weight", "conv1d.weight", "conv1d.bias",
                                                                  "dt_bias", "A_log", "D", "norm.weight"])]
    return layout


# Qwen3-Next's RMSNorms scale by 1 + weight where lmzoo's scale by weight.
QWEN3_NEXT_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "model.norm.weight")


def qwen3_next_layout(model: Transformer) -> list[tuple[list[str], str, torch.Tensor | None]]:
    """Each Qwen3NextForCausalLM weight of a Gated DeltaNet model: the lmzoo weights it is made of, and the order
    of their joined rows in it (None: as they are). Qwen3-Next projects each head's q, k, v and output gate z
    together, and each head's b and a together."""
    pairs = [(["transformer.wte.weight"], "model.embed_tokens.weight", None),
             (["transformer.ln_f.weight"], "model.norm.weight", None)]
    if not model.config.tie_embeddings:
        pairs.append((["lm_head.weight"], "lm_head.weight", None))
    for i, block in enumerate(model.transformer.h):
        a, ours, theirs = block.attn, f"transformer.h.{i}.", f"model.layers.{i}."
        H, K, V = a.n_head, a.key_dim, a.value_dim
        per_head = [torch.arange(start + h * size, start + (h + 1) * size)
                    for h in range(H) for start, size in ((0, K), (H * K, K), (2 * H * K, V), (2 * H * K + H * V, V))]
        pairs += [
            ([ours + "ln_1.weight"], theirs + "input_layernorm.weight", None),
            ([ours + "attn.c_attn.weight", ours + "attn.g_proj.weight"], theirs + "linear_attn.in_proj_qkvz.weight",
             torch.cat(per_head)),
            ([ours + "attn.b_proj.weight", ours + "attn.a_proj.weight"], theirs + "linear_attn.in_proj_ba.weight",
             torch.arange(2 * H).view(2, H).T.flatten()),
            ([ours + "attn.c_proj.weight"], theirs + "linear_attn.out_proj.weight", None),
            ([ours + "attn.o_norm.weight"], theirs + "linear_attn.norm.weight", None),
            ([ours + "ln_2.weight"], theirs + "post_attention_layernorm.weight", None),
            ([ours + "mlp.c_fc.weight"], theirs + "mlp.gate_proj.weight", torch.arange(block.mlp.c_proj.in_features)),
            ([ours + "mlp.c_fc.weight"], theirs + "mlp.up_proj.weight",
             torch.arange(block.mlp.c_proj.in_features, 2 * block.mlp.c_proj.in_features)),
            ([ours + "mlp.c_proj.weight"], theirs + "mlp.down_proj.weight", None),
            *[([ours + "attn." + name], theirs + "linear_attn." + name, None)
              for name in ("conv1d.weight", "dt_bias", "A_log")],
        ]
    return pairs


def qwen3_next_weights(state: dict[str, torch.Tensor], model: Transformer) -> dict[str, torch.Tensor]:
    """lmzoo's `state` of a Gated DeltaNet model as Qwen3NextForCausalLM's weights."""
    weights = {}
    for ours, theirs, order in qwen3_next_layout(model):
        joined = torch.cat([state[name] for name in ours])
        weights[theirs] = (joined if order is None else joined[order]) - float(theirs.endswith(QWEN3_NEXT_NORMS))
    return weights


def qwen3_next_state_dict(weights: dict[str, torch.Tensor], model: Transformer, source: str) -> dict[str, torch.Tensor]:
    """Qwen3-Next weights (as lmzoo exports them) reordered, split and padded into `model`'s state dict."""
    expected, state = model.state_dict(), {}
    for ours, theirs, order in qwen3_next_layout(model):
        if theirs not in weights:
            raise UserError(f"{source} has no weight {theirs}; it does not match its lmzoo.json")
        tensor = weights[theirs] + float(theirs.endswith(QWEN3_NEXT_NORMS))
        sizes = [expected[name].size(0) for name in ours]
        if order is not None:
            # Rows in their order; a weight built in parts (c_fc from gate_proj, then up_proj) keeps its first part.
            joined = state[ours[0]] if len(ours) == 1 and ours[0] in state else tensor.new_empty(sum(sizes),
                                                                                                 *tensor.shape[1:])
            joined[order] = tensor
            tensor = joined
        state |= dict(zip(ours, tensor.split(sizes) if len(ours) > 1 else [tensor]))
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return checked(padded_vocabulary(state, expected), expected, source)


def llama_state_dict(weights: dict[str, torch.Tensor], model: Transformer, source: str,
                     layout=llama_layout) -> dict[str, torch.Tensor]:
    """Weights of Llama's layout, or another `layout` (as lmzoo exports them), joined and padded into `model`'s
    state dict."""
    expected = model.state_dict()
    try:
        state = {ours: torch.cat([weights[name] for name in theirs]) for ours, theirs, _ in layout(model)}
    except KeyError as error:
        raise UserError(f"{source} has no weight {error.args[0]}; it does not match its lmzoo.json") from None
    state = padded_vocabulary(state, expected)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return checked(state, expected, source)


def padded_vocabulary(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The embedding and head padded with zero rows to lmzoo's padded vocabulary (rows no token id reaches)."""
    for key in VOCAB_ROWS:
        if key in state and key in expected and state[key].size(0) < expected[key].size(0):
            tensor = state[key]
            state[key] = torch.cat([tensor, tensor.new_zeros(expected[key].size(0) - tensor.size(0), tensor.size(1))])
    return state


def checked(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    wrong = sorted(key for key in expected if key not in state or state[key].shape != expected[key].shape)
    if wrong:
        raise UserError(f"{source} does not match its config.json: {wrong[0]} is missing or misshapen")
    return state
