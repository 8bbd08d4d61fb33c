"""The attention variants' own promises: what a local layer sees and keeps, what latent attention caches,
differential attention as the paper writes it, and their LoRA targets. (Each is also a preset of the zoo
tests, and is proven equal to its transformers class in test_interop.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import V, counted_flops_per_token

from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import TransformerConfig
from lmzoo.models.blocks import (HAND_ATTENTION_KEYS, Attention, LocalAttention, attention_mask, banded_attention,
                                 causal_attention, differential_lambda_init)
from lmzoo.models.lora import LoRA, LoRALinear

SHAPE = dict(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=32)
GLOBAL, LOCAL = Attention.name, LocalAttention.name


def local(window: int, *pattern: str, **knobs) -> dict:
    """Settings of local layers of `window` (and `pattern` after them), each attention with `knobs`."""
    names = [LOCAL, *pattern]
    return dict(layer_pattern=names, mixers={name: dict(knobs, **(dict(window=window) if name == LOCAL else {}))
                                             for name in names})


def attention(**knobs) -> dict:
    return dict(mixers={GLOBAL: knobs})


# Each variant at SHAPE, with the small sizes the numbers below are worked out for.
VARIANTS = {
    "gpt_rope": {},
    "swa": local(6, GLOBAL),
    "mla": attention(variant="mla", kv_rank=16, rope_head_dim=8),
    "diff_attn": dict(n_head=4, **attention(n_kv_head=2, variant="differential")),
}


def make(name: str):
    torch.manual_seed(0)
    return TransformerConfig(**{**SHAPE, **VARIANTS[name]}).build()


def changed_positions(model, position: int) -> list[int]:
    """The positions whose logits change when the token at `position` does."""
    idx = torch.randint(0, V, (1, 20))
    changed = idx.clone()
    changed[0, position] = (idx[0, position] + 1) % V
    with torch.no_grad():
        return torch.nonzero((model(idx).logits - model(changed).logits).abs().amax(-1)[0] > 0).flatten().tolist()


def test_local_layers_see_only_their_window():
    """Two local layers of window 3: a token reaches the 2 positions after it in each layer, 4 in all; one global
    layer reaches every later position."""
    torch.manual_seed(0)
    only_local = TransformerConfig(**SHAPE, **local(3)).build().eval()
    assert changed_positions(only_local, 6) == [6, 7, 8, 9, 10]
    torch.manual_seed(0)
    mixed = TransformerConfig(**SHAPE, **local(3, GLOBAL)).build().eval()
    assert changed_positions(mixed, 6) == list(range(6, 20))


def decoded_cache(model, tokens: int = 20):
    """The cache after greedy decoding of `tokens` tokens from a prompt of 4 (within block_size)."""
    cache, idx = model.new_cache(), torch.randint(0, V, (2, 4))
    with torch.no_grad():
        logits = model(idx, cache).logits[:, -1]
        for _ in range(tokens - 4):
            logits = model(logits.argmax(-1, keepdim=True), cache).logits[:, -1]
    return cache


def test_a_local_layers_cache_keeps_only_its_window_and_latent_attention_only_the_latent_and_rope_key():
    swa, mla = make("swa").eval(), make("mla").eval()
    cache = decoded_cache(swa)
    # Layer 0 is local (window 6): the 5 past tokens a query sees besides itself; layer 1 keeps all 20.
    assert [[tuple(t.shape) for t in (state.keys, state.values)] for state in cache.states] == [
        [(2, 2, 5, 16)] * 2, [(2, 2, 24, 16)] * 2]
    assert cache.nbytes() == 4 * 2 * 2 * 2 * 16 * (5 + 24)
    # Latent attention caches the RoPE key (B, 1, T, rope_head_dim) and the latent (B, 1, T, kv_rank).
    cache = decoded_cache(mla)
    assert [tuple(t.shape) for t in (cache.states[0].keys, cache.states[0].values)] == [(2, 1, 24, 8), (2, 1, 24, 16)]
    assert mla.cache_values(24) == 2 * 24 * (16 + 8) and make("gpt_rope").cache_values(24) == 2 * 24 * 2 * 32


@pytest.mark.parametrize("T, window, heads, kv_heads, value_width", [
    (20, 3, 4, 2, 8), (24, 6, 2, 2, 8), (37, 5, 4, 1, 16), (64, 16, 4, 4, 8)])
def test_the_band_of_blocks_gives_the_sliding_window_attention(T, window, heads, kv_heads, value_width):
    """Computed only in the band (blocks of the window against themselves and the block before), grouped keys and
    wider values included, over lengths that are no multiple of the window."""
    torch.manual_seed(0)
    q, k = torch.randn(2, heads, T, 8), torch.randn(2, kv_heads, T, 8)
    v = torch.randn(2, kv_heads, T, value_width)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(0, T, 0, window, q.device),
                                            enable_gqa=kv_heads != heads)
    torch.testing.assert_close(banded_attention(q, k, v, window, 0.0), masked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("context, keys", [(12, 12), (24, 12), (22, 12 * 24 / 22)])
def test_a_local_layer_is_charged_the_keys_its_kernel_computes(context, keys):
    """swa's first layer (window 6): up to 2 windows the masked kernel computes every key of the context; past them
    the band, 2 windows a query over whole blocks (24 padded tokens at a context of 22). Its FLOPs are FlopCounterMode's
    where a token's count is whole."""
    swa, full = make("swa"), make("gpt_rope")
    assert full.flops_per_token(context) - swa.flops_per_token(context) == round(3 * 2 * 2 * (context - keys) * 32)
    if context != 22:
        assert swa.flops_per_token(context) == counted_flops_per_token(swa, torch.randint(0, V, (3, context)))


def test_an_all_local_model_decodes_past_its_context_without_refilling_as_without_the_cache():
    """Its cache is unbounded: it never restarts from recent context, and each layer keeps its window. The
    uncached path reads the last block_size tokens, which hold every token the two local layers reach."""
    torch.manual_seed(0)
    model = TransformerConfig(**SHAPE, **local(4)).build().eval()
    assert model.new_cache().capacity is None and make("swa").new_cache().capacity == 24
    cache = decoded_cache(model, tokens=60)
    assert cache.position == 60 and all(state.keys.size(-2) == 3 for state in cache.states)
    prompt = torch.randint(0, V, (2, 3))
    runs = [torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=40, temperature=0,
                                                                      kv_cache=cached))), dim=1)
            for cached in (True, False)]
    assert torch.equal(*runs)


def paper_differential_attention(attn, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Diff Transformer's equations as the paper's code lays the heads out (microsoft/unilm,
    Diff-Transformer/multihead_flashdiff_1.py), pair by pair: [Q1; Q2] = X W_q, [K1; K2] = X W_k, V = X W_v,
    DiffAttn(X) = (softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))) V, lambda = exp(lq1 . lk1) -
    exp(lq2 . lk2) + lambda_init, each pair RMS-normalized with a learned scale and scaled by 1 - lambda_init, then
    W_o. Pair i is query heads 2i and 2i + 1, and reads key heads 2m and 2m + 1 and value heads 2m and 2m + 1 side by
    side, m = i // (the query pairs per key pair)."""
    T, d, H, kv = x.size(0), attn.head_dim, attn.n_head, attn.n_kv_head
    q, k, v = attn.c_attn(x).split([H * d, kv * d, kv * d], dim=-1)
    q, k, v = (t.view(T, -1, d).transpose(0, 1) for t in (q, k, v))
    q, k = attn.rotary(q, 0), attn.rotary(k, 0)
    groups, lambda_init = H // kv, differential_lambda_init(layer)
    lam = (math.exp(attn.lambda_q1 @ attn.lambda_k1) - math.exp(attn.lambda_q2 @ attn.lambda_k2) + lambda_init)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    heads = []
    for i in range(H // 2):
        m = i // groups
        maps = [(q[2 * i + s] @ k[2 * m + s].T / math.sqrt(d)).masked_fill(future, -math.inf).softmax(-1)
                for s in (0, 1)]
        values = torch.cat((v[2 * m], v[2 * m + 1]), dim=-1)
        normed = F.rms_norm((maps[0] - lam * maps[1]) @ values, (2 * d,), attn.pair_norm.weight, eps=1e-5)
        heads.append((1 - lambda_init) * normed)
    return attn.c_proj(torch.cat(heads, dim=-1))


def diffllama_differential_attention(attn, x: torch.Tensor, layer: int) -> torch.Tensor:
    """The same in Hugging Face's DiffLlama's layout (lmzoo 0.2's): pair i takes query heads i and i + h and the
    key heads they share, and no scale in the norm."""
    T, d, H, kv = x.size(0), attn.head_dim, attn.n_head, attn.n_kv_head
    q, k, v = attn.c_attn(x).split([H * d, kv * d, kv * d], dim=-1)
    q, k, v = (t.view(T, -1, d).transpose(0, 1) for t in (q, k, v))
    q, k = attn.rotary(q, 0), attn.rotary(k, 0)
    group, h, lambda_init = H // kv, H // 2, differential_lambda_init(layer)
    lam = (math.exp(attn.lambda_q1 @ attn.lambda_k1) - math.exp(attn.lambda_q2 @ attn.lambda_k2) + lambda_init)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    heads = []
    for i in range(h):
        maps = [(q[j] @ k[j // group].T / math.sqrt(d)).masked_fill(future, -math.inf).softmax(-1) for j in (i, i + h)]
        values = torch.cat((v[i // group], v[i // group + kv // 2]), dim=-1)
        heads.append((1 - lambda_init) * F.rms_norm((maps[0] - lam * maps[1]) @ values, (2 * d,), eps=1e-5))
    return attn.c_proj(torch.cat(heads, dim=-1))


LAYOUT_ORACLES = {"paper": paper_differential_attention, "diffllama": diffllama_differential_attention}


@pytest.mark.parametrize("layout", LAYOUT_ORACLES)
@pytest.mark.parametrize("n_head, n_kv_head", [(4, 4), (4, 2), (8, 2)])
def test_differential_attention_follows_the_papers_equations_in_either_layout(layout, n_head, n_kv_head):
    torch.manual_seed(0)
    model = TransformerConfig(**{**SHAPE, "n_head": n_head}, **attention(
        n_kv_head=n_kv_head, variant="differential", differential_layout=layout)).build()
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            attn = block.attn
            if layout == "paper":
                attn.pair_norm.weight.normal_(1.0, 0.5)
            assert attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * layer))
            torch.testing.assert_close(attn(x)[0], LAYOUT_ORACLES[layout](attn, x[0], layer), atol=1e-6, rtol=0)


def adapted(model) -> set[str]:
    return {name.split(".", 3)[-1] for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def test_lora_targets_cover_latent_attentions_projections():
    torch.manual_seed(0)
    config = TransformerConfig(**SHAPE, **attention(variant="mla", kv_rank=16, rope_head_dim=8, q_rank=12))
    assert adapted(LoRA(r=2, targets=["qkv", "proj"]).apply(config.build())) == {
        "attn.c_q.0", "attn.c_q.2", "attn.c_kv_a", "attn.c_kv_b", "attn.c_proj"}
    idx = torch.randint(0, V, (2, 16))
    model = make("diff_attn").eval()
    before = model(idx).logits
    assert torch.equal(LoRA(r=2, alpha=4).apply(model)(idx).logits, before)
    assert not any(p.requires_grad for name, p in model.named_parameters() if "lambda" in name)


def test_describe_gives_the_attention_and_its_cache_against_multi_head_attention():
    model = TransformerConfig(vocab_size=65, block_size=64, **attention(variant="mla", kv_rank=64,
                                                                         rope_head_dim=16)).build()
    assert model.describe()[1:] == [
        f"layers: 4 x {GLOBAL} (mla: kv_rank 64, rope_head_dim 16, q_rank full) + mlp (341 wide, silu, gated)",
        "KV cache at block_size 64 in fp32: 1,280 B per token (multi-head attention of these 4 heads: 4,096 B)"]
    # A hybrid's against multi-head attention in its attending layers only: half of its 4 here.
    hybrid = TransformerConfig(vocab_size=65, block_size=64, layer_pattern=["base_conv", "attention"]).build()
    width = hybrid.config.n_embd
    assert hybrid.describe()[-1] == (f"KV cache at block_size 64 in fp32: {4 * 2 * 2 * width:,} B per token "
                                     f"(multi-head attention of these 4 heads: {4 * 2 * 2 * width:,} B)")
    swa = TransformerConfig(vocab_size=65, block_size=64, **local(16, GLOBAL, qk_norm=True)).build()
    assert swa.describe()[1] == (f"layers: 1 x {LOCAL} (window 16; 4 heads, 4 key/value heads, qk_norm) + mlp (341 "
                                 f"wide, silu, gated); 1 x {GLOBAL} (4 heads, 4 key/value heads, qk_norm) + mlp (341 "
                                 "wide, silu, gated); cycled over 4")


@pytest.mark.parametrize("keys", [16, HAND_ATTENTION_KEYS, HAND_ATTENTION_KEYS + 1])
def test_a_cpus_bf16_training_attends_by_hand_over_short_contexts_and_samples_with_pytorchs_kernel(keys):
    """PyTorch's CPU flash attention's bf16 backward is slow over short contexts (bench/README.md): up to
    HAND_ATTENTION_KEYS keys a training step under bf16 autocast computes the math by hand, the products in bf16 and
    the softmax in fp32 (as Hugging Face's eager attention); longer ones, and a forward without gradients (sampling,
    validation), take PyTorch's kernel in bf16."""
    q, k, v = (torch.randn(2, 2, keys, 8).bfloat16().requires_grad_() for _ in range(3))
    scores = (q * 8**-0.5) @ k.transpose(-2, -1)
    causal = torch.ones(keys, keys, dtype=torch.bool).tril()
    by_hand = scores.masked_fill(~causal, -math.inf).softmax(-1, dtype=torch.float32).bfloat16() @ v
    kernel = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    in_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert not torch.equal(by_hand, kernel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = causal_attention(q, k, v, None, None, 0, 0.0)
        with torch.no_grad():
            sampled = causal_attention(q, k, v, None, None, 0, 0.0)
    assert trained.dtype == torch.bfloat16
    assert torch.equal(trained, by_hand if keys <= HAND_ATTENTION_KEYS else kernel)
    assert torch.equal(sampled, kernel)
    # Either way bf16's rounding of fp32's attention.
    assert torch.allclose(trained.float(), in_fp32, atol=0.03)
    trained.sum().backward()
    assert q.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_expectation_its_gradient_through_the_same_mask(p):
    from lmzoo.models.blocks import DROPOUT_BITS, dropout

    x = (torch.rand(1_000_001, dtype=torch.float64) + 0.5).requires_grad_()
    torch.manual_seed(0)
    y = dropout(x, p)
    dropped = y == 0
    # p drawn in steps of 2^-15; 1,000,001 elements put the fraction within 5 sd of it.
    rounded = round(p * 2**DROPOUT_BITS) / 2**DROPOUT_BITS
    assert abs(dropped.double().mean().item() - rounded) < 5 * math.sqrt(rounded * (1 - rounded) / x.numel())
    assert torch.allclose(y[~dropped], x[~dropped] / (1 - rounded), rtol=1e-12)
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(x.grad == 0, dropped) and torch.allclose(x.grad[~dropped].detach(),
                                                                torch.full_like(x[~dropped], 3 / (1 - rounded)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p), y), "the mask follows torch's seed"
    # Each lane (half of a random word) drops at the same rate.
    assert abs(dropped[0::2].double().mean() - dropped[1::2].double().mean()).item() < 0.005


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_with_dropout_on_a_cpu_drops_its_probabilities_as_pytorchs_math_path(heads, kv_heads, masked):
    from lmzoo.models.blocks import attend, dropout

    q, k, v = (torch.randn(2, h, 9, 8, dtype=torch.float64) for h in (heads, kv_heads, kv_heads))
    mask = attention_mask(0, 9, 0, 4, q.device) if masked else None
    # Without dropout, PyTorch's kernel itself.
    assert torch.equal(attend(q, k, v, mask, 0.0, is_causal=not masked),
                       F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not masked,
                                                      enable_gqa=heads != kv_heads))
    torch.manual_seed(1)
    y = attend(q, k, v, mask, 0.3, is_causal=not masked)
    scores = q @ k.repeat_interleave(heads // kv_heads, 1).transpose(-2, -1) / math.sqrt(8)
    allowed = mask if masked else torch.ones(9, 9, dtype=torch.bool).tril()
    torch.manual_seed(1)
    dropped = dropout(scores.masked_fill(~allowed, -math.inf).softmax(-1), 0.3)
    assert torch.allclose(y, dropped @ v.repeat_interleave(heads // kv_heads, 1), atol=1e-12)
    assert not torch.allclose(y, attend(q, k, v, mask, 0.0, is_causal=not masked))
