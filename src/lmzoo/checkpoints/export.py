"""Models out: a transformer in GPT-2's choices as GPT2LMHeadModel; one in Llama's as the transformers class of
its attention (LlamaForCausalLM; Qwen3ForCausalLM with QK-norm, Qwen2ForCausalLM with local layers,
DeepseekV3ForCausalLM with latent attention, DiffLlamaForCausalLM with differential attention); Mamba-2 as
Mamba2ForCausalLM, Gated DeltaNet as Qwen3NextForCausalLM (every layer linear, dense MLPs); any other
architecture as lmzoo's own folder (model.safetensors plus lmzoo.json).

transformers is imported inside the functions that need it, so training and sampling never import it.
"""

import contextlib
import os
import shutil
from pathlib import Path

import torch

from lmzoo.checkpoints.folder import INSTALL_HINT, safetensors_io_error, save_folder, write_record
from lmzoo.checkpoints.hf import CONV1D_WEIGHTS, VOCAB_ROWS, llama_layout, mamba2_layout, qwen3_next_weights
from lmzoo.checkpoints.hf_tokenizer import save_tokenizer
from lmzoo.checkpoints.load import load_model
from lmzoo.checkpoints.record import ModelRecord
from lmzoo.data.tokenizer import Tokenizer
from lmzoo.errors import UserError
from lmzoo.files import os_error_behind, sync_folder
from lmzoo.models import LanguageModel, Transformer, TransformerConfig
from lmzoo.models.lora import LoRALinear, merge


def converter_for(model: LanguageModel):
    """The function that turns `model` into a transformers model, or None when no transformers class fits it."""
    config = model.config
    if type(config) is not TransformerConfig:
        return None
    modern = (config.norm, config.activation, config.gated_mlp, config.bias) == ("rmsnorm", "silu", True, False)
    if config.layer_pattern == ["mamba2"]:
        return to_mamba2 if config.mlp_ratio == 0 and config.norm == "rmsnorm" and config.positions == "rope" else None
    if config.layer_pattern == ["gated_deltanet"]:
        return to_qwen3_next if modern and config.mlp_ratio and config.positions == "rope" else None
    if {"mamba2", "gated_deltanet"} & set(config.layer_pattern) or not config.mlp_ratio:
        # A hybrid's attention layers are pre-norm Llama ones; the transformers hybrids with Gated DeltaNet
        # do attention otherwise (OLMo-Hybrid norms after it, Qwen3-Next gates it and rotates a quarter of a head).
        return None
    local = "local_attention" in [config.mixer(layer) for layer in range(config.n_layer)]
    if (config.positions, config.norm, config.activation, config.gated_mlp) == ("learned", "layernorm", "gelu", False):
        fits = (config.mlp_ratio == 4.0 and config.n_kv_head in (None, config.n_head) and not local
                and not config.qk_norm and config.attention == "standard")
        return to_gpt2 if fits else None
    if (config.positions, config.norm, config.activation, config.gated_mlp, config.bias) != (
            "rope", "rmsnorm", "silu", True, False):
        return None
    if config.attention == "mla":
        return None if local else to_deepseek_v3
    if config.attention == "differential":
        return None if local or config.qk_norm else to_diffllama
    if config.qk_norm:
        return to_qwen3
    return to_qwen2 if local else to_llama


def export_checkpoint(ckpt: str, out: str, merge_adapters: bool = False) -> str:
    """Write the model of `ckpt` into the new folder `out`; return a line saying what was written.

    Beside the weights goes lmzoo.json: the model's config, tokenizer and training so far, so that every
    lmzoo command loads the folder back as the model it was.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"out={out} already exists and is not an empty folder; pass a new folder")
    model, tokenizer, record = load_model(ckpt)
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        if not merge_adapters:
            raise UserError(f"{ckpt} holds LoRA adapters; pass merge=true to fold them into the exported weights")
        merge(model)
    converter = converter_for(model)
    with folder_written_whole(out):
        if converter is None:
            save_folder(model, tokenizer.spec, partial_folder(out), record)
            options = " in these options" if type(model.config) is TransformerConfig else ""
            return (f"{type(model).__name__}{options} has no transformers class; wrote lmzoo safetensors and "
                    f"lmzoo.json to {out}, which python -m lmzoo.generate ckpt={out} loads")
        wrote = export_hf(model, converter, tokenizer, partial_folder(out), record)
        return f"wrote {wrote} to {out}; load it with AutoModelForCausalLM.from_pretrained"


def partial_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


@contextlib.contextmanager
def folder_written_whole(out: Path):
    """The block writes into partial_folder(out), which becomes `out` only when the block completes: a full disk,
    an error or a kill leaves no half-written `out` that commands would take for a model. The partial folder of
    a killed export is removed by the next one."""
    partial = partial_folder(out)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        yield
        if out.is_dir():
            out.rmdir()
        os.replace(partial, out)
        sync_folder(out.parent)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        cause = os_error_behind(error)
        # safetensors (lmzoo's own folder, and transformers' save_pretrained) reports its I/O errors as its own.
        reason = (cause.strerror or str(cause)) if cause is not None else safetensors_io_error(error)
        if reason is None:
            raise
        raise UserError(f"cannot write {out} ({reason}); pass out= a writable new folder, or free disk space") from None


def export_hf(model, converter, tokenizer: Tokenizer, out: Path, source: ModelRecord) -> str:
    """Write the transformers model of `model` and its tokenizer into `out`; return what was written."""
    try:
        from transformers import GenerationConfig
    except ImportError:
        raise UserError(f"exporting to Hugging Face needs transformers: {INSTALL_HINT}") from None
    hf_model = converter(model, tokenizer.eot_id)
    hf_model.generation_config = GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
                                                  use_cache=hf_model.config.use_cache)
    hf_model.save_pretrained(out)
    saved = save_tokenizer(tokenizer, out)
    write_record(model, tokenizer.spec, out, source)
    return f"{type(hf_model).__name__} ({saved})"


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


def llama_family(model: Transformer, hf_class, config_class, eot_id: int | None, **settings):
    """`model` as `hf_class`, a transformers class of Llama's layout (lmzoo.checkpoints.hf.llama_layout)."""
    hp = model.config
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    config = config_class(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, intermediate_size=mlp.c_proj.in_features,
        num_hidden_layers=hp.n_layer, num_attention_heads=attn.n_head, max_position_embeddings=model.block_size,
        rms_norm_eps=1e-5, rope_theta=hp.rope_base, hidden_act="silu", tie_word_embeddings=hp.tie_embeddings,
        bos_token_id=eot_id, eos_token_id=eot_id, **settings,
    )
    return load_into(hf_class(config), laid_out(model, llama_layout))


def to_llama(model: Transformer, eot_id: int | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, LlamaForCausalLM, LlamaConfig, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, mlp_bias=False)


def sliding_windows(model: Transformer) -> dict:
    """Qwen's settings for the local_attention layers: their window and which layers they are."""
    hp = model.config
    kinds = [hp.mixer(layer) for layer in range(hp.n_layer)]
    return dict(use_sliding_window="local_attention" in kinds, sliding_window=hp.window,
                layer_types=["sliding_attention" if kind == "local_attention" else "full_attention" for kind in kinds])


def to_qwen2(model: Transformer, eot_id: int | None):
    """Qwen2 has per-layer sliding windows and no QK-norm; its q, k, v biases are exported as zeros."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, Qwen2ForCausalLM, Qwen2Config, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, **sliding_windows(model))


def to_qwen3(model: Transformer, eot_id: int | None):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, Qwen3ForCausalLM, Qwen3Config, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, **sliding_windows(model))


def to_diffllama(model: Transformer, eot_id: int | None):
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, DiffLlamaForCausalLM, DiffLlamaConfig, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, mlp_bias=False)


def to_deepseek_v3(model: Transformer, eot_id: int | None):
    """Every layer dense (first_k_dense_replace = n_layer), RoPE on the halves of the rope channels as lmzoo's."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hp = model.config
    return llama_family(model, DeepseekV3ForCausalLM, DeepseekV3Config, eot_id, num_key_value_heads=hp.n_head,
                        kv_lora_rank=hp.kv_rank, q_lora_rank=hp.q_rank, qk_rope_head_dim=hp.rope_head_dim,
                        qk_nope_head_dim=hp.head_dim, v_head_dim=hp.head_dim, first_k_dense_replace=hp.n_layer,
                        rope_interleave=False, attention_bias=False)


def to_mamba2(model: Transformer, eot_id: int | None):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    hp, mixer = model.config, model.transformer.h[0].attn
    config = Mamba2Config(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, num_hidden_layers=hp.n_layer, state_size=hp.ssm_state,
        expand=hp.ssm_expand, head_dim=hp.ssm_head_dim, num_heads=mixer.n_head, n_groups=hp.ssm_groups,
        conv_kernel=hp.conv_kernel, chunk_size=hp.chunk_size, use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=1e-5, tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id, eos_token_id=eot_id,
        pad_token_id=eot_id,
    )
    return load_into(Mamba2ForCausalLM(config), laid_out(model, mamba2_layout))


def to_qwen3_next(model: Transformer, eot_id: int | None):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    hp, mixer = model.config, model.transformer.h[0].attn
    config = Qwen3NextConfig(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, num_hidden_layers=hp.n_layer,
        intermediate_size=model.transformer.h[0].mlp.c_proj.in_features, num_attention_heads=hp.n_head,
        num_key_value_heads=hp.n_head, head_dim=hp.head_dim, layer_types=["linear_attention"] * hp.n_layer,
        linear_num_key_heads=mixer.n_head, linear_num_value_heads=mixer.n_head, linear_key_head_dim=mixer.key_dim,
        linear_value_head_dim=mixer.value_dim, linear_conv_kernel_dim=hp.conv_kernel, num_experts=0,
        # transformers 5's cache needs an attention layer to size its masks; with none, it decodes uncached.
        use_cache=False,
        rms_norm_eps=1e-5, hidden_act="silu", max_position_embeddings=model.block_size,
        tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id, eos_token_id=eot_id,
    )
    return load_into(Qwen3NextForCausalLM(config), qwen3_next_weights(true_vocabulary(model), model))


def laid_out(model: Transformer, layout) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names of `layout`'s Hugging Face class, split where it has several."""
    ours, state = true_vocabulary(model), {}
    for name, theirs, rows in layout(model):
        state |= dict(zip(theirs, ours[name].split(rows) if rows else [ours[name]]))
    return state


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
