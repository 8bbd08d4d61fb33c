"""Models out: a transformer in GPT-2's choices as GPT2LMHeadModel, one in Llama's as LlamaForCausalLM, any
other architecture as lmzoo's own folder (model.safetensors plus lmzoo.json).

transformers is imported inside the functions that need it, so training and sampling never import it.
"""

from pathlib import Path

import torch

from lmzoo.checkpoints.folder import INSTALL_HINT, save_folder, write_record
from lmzoo.checkpoints.hf import CONV1D_WEIGHTS, VOCAB_ROWS, llama_layout
from lmzoo.checkpoints.hf_tokenizer import save_tokenizer
from lmzoo.checkpoints.load import load_model
from lmzoo.data.tokenizer import Tokenizer
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel, Transformer, TransformerConfig
from lmzoo.models.lora import LoRALinear, merge


def converter_for(model: LanguageModel):
    """The function that turns `model` into a transformers model, or None when no transformers class fits it."""
    config = model.config
    if type(config) is not TransformerConfig:
        return None
    if (config.positions, config.norm, config.activation, config.gated_mlp) == ("learned", "layernorm", "gelu", False):
        fits = config.mlp_ratio == 4.0 and config.n_kv_head in (None, config.n_head)
        return to_gpt2 if fits else None
    if (config.positions, config.norm, config.activation, config.gated_mlp, config.bias) == (
            "rope", "rmsnorm", "silu", True, False):
        return to_llama
    return None


def export_checkpoint(ckpt: str, out: str, merge_adapters: bool = False) -> str:
    """Write the model of `ckpt` into the new folder `out`; return a line saying what was written.

    Beside the weights goes lmzoo.json: the model's config, tokenizer and training so far, so that every
    lmzoo command loads the folder back as the model it was.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"out={out} already exists and is not an empty folder; pass a new folder")
    model, tokenizer, info = load_model(ckpt)
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        if not merge_adapters:
            raise UserError(f"{ckpt} holds LoRA adapters; pass merge=true to fold them into the exported weights")
        merge(model)
    trained = {key: info[key] for key in ("global_step", "best_val_loss")}
    converter = converter_for(model)
    try:
        if converter is None:
            save_folder(model, tokenizer.spec, out, trained)
            return (f"{type(model).__name__} has no transformers class; wrote lmzoo safetensors and lmzoo.json to "
                    f"{out}, which python -m lmzoo.generate ckpt={out} loads")
        return export_hf(model, converter, tokenizer, out, trained)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error}); pass out= a writable new folder") from None


def export_hf(model, converter, tokenizer: Tokenizer, out: Path, trained: dict) -> str:
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise UserError(f"exporting to Hugging Face needs transformers: {INSTALL_HINT}") from None
    hf_model = converter(model, tokenizer.eot_id)
    hf_model.generation_config = GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    hf_model.save_pretrained(out)
    saved = save_tokenizer(tokenizer, out)
    write_record(model, tokenizer.spec, out, trained)
    return f"wrote {type(hf_model).__name__} ({saved}) to {out}; load it with AutoModelForCausalLM.from_pretrained"


def to_gpt2(model: Transformer, eot_id: int | None):
    from transformers import GPT2Config, GPT2LMHeadModel

    hp = model.config
    config = GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.block_size, n_embd=hp.n_embd, n_layer=hp.n_layer,
        n_head=hp.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    state = {name: tensor.T if name.endswith(CONV1D_WEIGHTS) else tensor
             for name, tensor in true_vocabulary(model).items()
             if not (hp.tie_embeddings and name == "lm_head.weight")}
    return load_into(GPT2LMHeadModel(config), state)


def to_llama(model: Transformer, eot_id: int | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    hp = model.config
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    config = LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, intermediate_size=mlp.c_proj.in_features,
        num_hidden_layers=hp.n_layer, num_attention_heads=attn.n_head, num_key_value_heads=attn.n_kv_head,
        head_dim=attn.head_dim, max_position_embeddings=model.block_size, rms_norm_eps=1e-5,
        rope_theta=hp.rope_base, hidden_act="silu", attention_bias=False, mlp_bias=False,
        tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id, eos_token_id=eot_id,
    )
    ours = true_vocabulary(model)
    state = {}
    for name, theirs, rows in llama_layout(model):
        state |= dict(zip(theirs, ours[name].split(rows) if rows else [ours[name]]))
    return load_into(LlamaForCausalLM(config), state)


def true_vocabulary(model: Transformer) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the embedding and head cut to the true vocabulary (lmzoo pads them)."""
    state = model.state_dict()
    for key in VOCAB_ROWS:
        state[key] = state[key][: model.vocab_size]
    return state


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
