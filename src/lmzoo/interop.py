"""Interop: GPT-2 weights in from Hugging Face; models out, `gpt` as GPT2LMHeadModel, `gpt_rope` as
LlamaForCausalLM, any other architecture as lmzoo safetensors plus lmzoo.json.

Loading GPT-2 needs only safetensors (and huggingface_hub for `hf:NAME`); exporting needs transformers.
Both are imported here, lazily, so training and sampling never import them.
"""

import base64
import json
import tempfile
from pathlib import Path

import torch

from lmzoo import __version__, lora
from lmzoo.checkpoint import build_architecture, load_model
from lmzoo.errors import UserError
from lmzoo.models import GPT, GPTRope, LanguageModel
from lmzoo.tokenizers import END_OF_TEXT, Tokenizer

FOLDER_RECORD = "lmzoo.json"
GPT2_VOCAB_SIZE = 50257
# GPT-2 stores these as Conv1D (in, out) matrices; nn.Linear holds (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
INSTALL_HINT = "pip install 'lmzoo[hf]'"


def is_lmzoo_folder(source: str) -> bool:
    return (Path(source).expanduser() / FOLDER_RECORD).is_file()


def is_hf_source(source: str) -> bool:
    """`hf:NAME`, or a folder holding a Hugging Face config.json."""
    return source.startswith("hf:") or (Path(source).expanduser() / "config.json").is_file()


def load_gpt2(source: str) -> tuple[GPT, dict]:
    """GPT-2 from `hf:NAME` (gpt2, gpt2-medium, ...) or a local folder, and its lmzoo record."""
    folder = fetch(source)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise UserError(f"{source} holds a {config.get('model_type')!r} model; only GPT-2 weights load into lmzoo")
    if config["vocab_size"] != GPT2_VOCAB_SIZE or config.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{source} is not GPT-2's shape (vocabulary {GPT2_VOCAB_SIZE}, gelu_new); it cannot load")
    if config.get("n_inner") not in (None, 4 * config["n_embd"]) or config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise UserError(f"{source} changes GPT-2's MLP width or LayerNorm epsilon, which lmzoo's gpt does not")
    model = GPT(GPT2_VOCAB_SIZE, config["n_positions"], config["n_layer"], config["n_head"], config["n_embd"])
    model.load_state_dict(gpt2_state_dict(read_weights(folder), model, source))
    model.tokenizer_spec = {"kind": "tiktoken", "name": "gpt2"}
    info = {"target": "lmzoo.models.gpt.GPT", "config": model.model_config(), "tokenizer": model.tokenizer_spec,
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


def gpt2_state_dict(weights: dict[str, torch.Tensor], model: GPT, source: str) -> dict[str, torch.Tensor]:
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


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f"reading and writing model.safetensors needs safetensors: {INSTALL_HINT}") from None
    return safetensors.torch


def save_folder(model: LanguageModel, out: Path) -> None:
    """Write `model` as model.safetensors plus lmzoo.json (architecture, config, tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    safetensors_torch().save_model(model, str(out / "model.safetensors"))
    record = {"version": __version__, "target": f"{type(model).__module__}.{type(model).__qualname__}",
              "config": model.model_config(), "tokenizer": model.tokenizer_spec}
    (out / FOLDER_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def load_folder(source: str) -> tuple[LanguageModel, dict]:
    folder = Path(source).expanduser()
    info = json.loads((folder / FOLDER_RECORD).read_text())
    model = build_architecture(info)
    safetensors_torch().load_model(model, str(folder / "model.safetensors"))
    return model, {**info, "best_val_loss": float("inf"), "global_step": 0}


def export_checkpoint(ckpt: str, out: str, merge: bool = False) -> str:
    """Write the model of `ckpt` into the new folder `out`; return a line saying what was written."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"out={out} already exists and is not an empty folder; pass a new folder")
    model, tokenizer, _ = load_model(ckpt)
    if model.finetune:
        if not merge:
            raise UserError(f"{ckpt} holds LoRA adapters; pass merge=true to fold them into the exported weights")
        lora.merge(model)
    converter = {GPT: to_gpt2, GPTRope: to_llama}.get(type(model))
    if converter is None:
        save_folder(model, out)
        return (f"{type(model).__name__} has no transformers class; wrote lmzoo safetensors and lmzoo.json to "
                f"{out}, which python -m lmzoo.generate ckpt={out} loads")
    return export_hf(model, converter, tokenizer, out)


def export_hf(model, converter, tokenizer: Tokenizer, out: Path) -> str:
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise UserError(f"exporting to Hugging Face needs transformers: {INSTALL_HINT}") from None
    hf_model = converter(model, tokenizer.eot_id)
    hf_model.generation_config = GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    hf_model.save_pretrained(out)
    saved = save_tokenizer(tokenizer, out)
    return f"wrote {type(hf_model).__name__} ({saved}) to {out}; load it with AutoModelForCausalLM.from_pretrained"


def to_gpt2(model: GPT, eot_id: int | None):
    from transformers import GPT2Config, GPT2LMHeadModel

    hp = model.model_config()
    config = GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.block_size, n_embd=hp["n_embd"], n_layer=hp["n_layer"],
        n_head=hp["n_head"], activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id,
    )
    state = {name: tensor.T if name.endswith(CONV1D_WEIGHTS) else tensor
             for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    state["transformer.wte.weight"] = state["transformer.wte.weight"][: model.vocab_size]
    return load_into(GPT2LMHeadModel(config), state)


def to_llama(model: GPTRope, eot_id: int | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    hp = model.model_config()
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    config = LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=hp["n_embd"], intermediate_size=mlp.c_proj.in_features,
        num_hidden_layers=hp["n_layer"], num_attention_heads=attn.n_head, num_key_value_heads=attn.n_kv_head,
        head_dim=attn.head_dim, max_position_embeddings=model.block_size, rms_norm_eps=1e-5,
        rope_theta=hp["rope_base"], hidden_act="silu", attention_bias=False, mlp_bias=False,
        tie_word_embeddings=hp["tie_embeddings"], bos_token_id=eot_id, eos_token_id=eot_id,
    )
    vocab = model.vocab_size
    state = {"model.embed_tokens.weight": model.transformer.wte.weight[:vocab],
             "model.norm.weight": model.transformer.ln_f.weight}
    if not hp["tie_embeddings"]:
        state["lm_head.weight"] = model.lm_head.weight[:vocab]
    for i, block in enumerate(model.transformer.h):
        a = block.attn
        q, k, v = a.c_attn.weight.split([a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim])
        # c_fc computes [gate, up] in one matmul; the MLP splits its output with chunk(2).
        gate, up = block.mlp.c_fc.weight.chunk(2)
        layer = f"model.layers.{i}."
        state |= {
            layer + "input_layernorm.weight": block.ln_1.weight,
            layer + "self_attn.q_proj.weight": q,
            layer + "self_attn.k_proj.weight": k,
            layer + "self_attn.v_proj.weight": v,
            layer + "self_attn.o_proj.weight": a.c_proj.weight,
            layer + "post_attention_layernorm.weight": block.ln_2.weight,
            layer + "mlp.gate_proj.weight": gate,
            layer + "mlp.up_proj.weight": up,
            layer + "mlp.down_proj.weight": block.mlp.c_proj.weight,
        }
    return load_into(LlamaForCausalLM(config), state)


def load_into(hf_model, state: dict[str, torch.Tensor]):
    """Copy `state` into `hf_model`; biases lmzoo leaves out (bias=False) become zeros, the tied head is shared."""
    missing, unexpected = hf_model.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    tied_head = hf_model.config.tie_word_embeddings and "lm_head.weight" not in state
    untouched = [name for name in missing if not (name.endswith(".bias") or (tied_head and name == "lm_head.weight"))]
    if untouched or unexpected:
        raise RuntimeError(f"export left {untouched} unset and {unexpected} unused")
    with torch.no_grad():
        for name in missing:
            if name.endswith(".bias"):
                hf_model.get_parameter(name).zero_()
    return hf_model.eval()


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> str:
    """Write tokenizer.json for transformers when the tokenizer has a form it reads; describe what was written."""
    from transformers import PreTrainedTokenizerFast

    spec = tokenizer.spec
    if spec["kind"] == "tiktoken":
        backend, what = tiktoken_backend(tokenizer), f"tokenizer from tiktoken {spec['name']}"
    elif spec["kind"] == "char":
        backend, what = char_backend(tokenizer.chars), "character tokenizer"
    elif spec["kind"] == "bpe":
        backend, what = tokenizer.backend, "byte-level BPE tokenizer"
    else:
        return f"no tokenizer: kind {spec['kind']!r} has no transformers form"
    end = END_OF_TEXT if tokenizer.eot_id is not None else None
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end, eos_token=end, clean_up_tokenization_spaces=False
    ).save_pretrained(out)
    return what


def tiktoken_backend(tokenizer):
    """tokenizers' byte-level BPE with tiktoken's ranks, split pattern, and special tokens at tiktoken's ids."""
    from tokenizers import Tokenizer as Backend
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = tokenizer.encoding
    with tempfile.TemporaryDirectory() as folder:
        ranks = Path(folder) / "ranks.tiktoken"
        ranks.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                                 for token, rank in encoding._mergeable_ranks.items()))
        backend = json.loads(TikTokenConverter(vocab_file=str(ranks), pattern=encoding._pat_str).converted().to_str())
    # Special tokens keep tiktoken's ids, which may leave a gap after the ranks (cl100k_base does): an added
    # token takes its id from the model's vocabulary when it is there, and the next free id otherwise.
    backend["model"]["vocab"] |= encoding._special_tokens
    backend["added_tokens"] = [
        {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token, token_id in encoding._special_tokens.items()
    ]
    return Backend.from_str(json.dumps(backend))


def char_backend(chars: str):
    """One token per character, joined back without spaces; a character outside the vocabulary is an error."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend
