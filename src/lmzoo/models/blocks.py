"""The building blocks every architecture shares: one norm, one MLP, one attention, one block.

Parameter names follow Hugging Face GPT-2 (c_attn, c_proj, c_fc, ln_1, ln_2) so weights map across.

A block's sublayers share two call signatures: attention is `attn(x, cache, layer, routing)` and the
feed-forward layer `mlp(x, routing)`. `routing` collects what routed sublayers decided in this forward
pass (see lmzoo.models.routing); dense sublayers ignore it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, RoutingLog, SequenceMixer, Sublayer
from lmzoo.models.cache import Cache, KVState, WindowState

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else nn.RMSNorm(dim, eps=1e-5)


def make_dropout(p: float) -> nn.Module:
    """Dropout, or nothing at p = 0: a Dropout of 0 still costs a call in every layer, and at batch 1 on CPU
    such calls are what a decoded token costs."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


ACTIVATIONS = {
    # GPT-2's tanh approximation; gelu_erf is the exact GELU (nanoGPT's), about twice as fast on CPU.
    "gelu": lambda: nn.GELU(approximate="tanh"),
    "gelu_erf": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


class MLP(Sublayer):
    """Feed-forward layer; `gated` makes it a GLU (SwiGLU with silu): act(gate) * up."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", gated: bool = False, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.gated = gated
        self.c_fc = nn.Linear(dim, 2 * hidden if gated else hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, routing: RoutingLog | None = None) -> torch.Tensor:
        h = self.c_fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mlp_inputs(self) -> list[nn.Module]:
        return [self.c_fc]


class Rotary(nn.Module):
    """Rotary position embedding (RoPE), rotating pairs (i, i + head_dim/2) as Llama does."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.tabulate(max_positions)

    def tabulate(self, positions: int) -> None:
        """The cosines and sines of positions 0..positions - 1 (those of a position never change with it)."""
        angles = torch.outer(torch.arange(positions, dtype=torch.float32, device=self.inv_freq.device), self.inv_freq)
        cos, sin = angles.cos(), angles.sin()
        # Over the whole head: (x1, x2) * cos + (x2, x1) * (-sin, sin) is (x1 cos - x2 sin, x2 cos + x1 sin), and
        # (x2, x1) is x rolled by half a head: three operations where the two halves apart take seven.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x of shape (B, heads, T, head_dim) whose first position is `start`."""
        T = x.size(-2)
        if start + T > self.cos.size(0):
            # Past block_size: a model of local layers only decodes on there (Transformer.new_cache). Normal
            # tensors even while sampling, so that training can use them afterwards.
            with torch.inference_mode(False):
                self.tabulate(2 * (start + T))
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


# Differential attention's lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init.
DIFFERENTIAL_LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


class Attention(SequenceMixer):
    """Causal self-attention with grouped-query heads, optional RoPE and a KV cache; the options of the
    attention variants lmzoo compares:

    - `qk_norm`: RMSNorm of each query and key head before the scores (Qwen3, OLMo 2, Gemma 3);
    - `window`: each query sees only the last `window` tokens, itself included (Mistral, Gemma 2/3); its cache
      keeps only them;
    - `lambda_init`: differential attention (Diff Transformer, Ye et al. 2025): query and key heads come in
      pairs whose two softmax maps are subtracted, the second weighted by a learned lambda, over values of
      twice the head size; each difference is RMS-normalized and scaled by 1 - lambda_init. The paper's
      reference gives that norm a learned scale; here the output projection holds it, as in Hugging Face's
      DiffLlama.
    """

    def __init__(self, dim: int, n_head: int, head_dim: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, rotary: Rotary | None = None, *, qk_norm: bool = False,
                 window: int | None = None, lambda_init: float | None = None):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.n_kv_head = n_kv_head or n_head
        self.c_attn = nn.Linear(dim, (self.n_head + 2 * self.n_kv_head) * head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)
        self.rotary = rotary
        self.window = window
        if qk_norm:
            self.q_norm, self.k_norm = nn.RMSNorm(head_dim, eps=1e-5), nn.RMSNorm(head_dim, eps=1e-5)
        self.qk_norm = qk_norm
        self.lambda_init = lambda_init
        if lambda_init is not None:
            # lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init, the paper's
            # reparameterization, which keeps lambda's learning in step with the other weights'.
            for name in DIFFERENTIAL_LAMBDAS:
                self.register_parameter(name, nn.Parameter(torch.empty(head_dim).normal_(0, 0.1)))

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        heads = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k, v = heads.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.lambda_init is None:
            y = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0,
                                 self.window)
        else:
            y = self.differential(q, k, v, cache, layer)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def differential(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: Cache | None,
                     layer: int) -> torch.Tensor:
        """The differences of the paired maps (B, n_head / 2, T, 2 head_dim): query heads i and i + n_head / 2
        pair up, as key heads do, and each pair reads the values of its two key heads side by side."""
        def rebuild(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            first, second = values.chunk(2, dim=1)
            return keys, torch.cat((first, second), dim=-1).repeat(1, 2, 1, 1)

        maps = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0,
                                self.window, rebuild)
        first, second = maps.chunk(2, dim=1)
        lam = (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
               - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)
        y = F.rms_norm(first - lam * second, (2 * self.head_dim,), eps=1e-5)
        return (1 - self.lambda_init) * y

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        # Differential attention's values are twice as wide as its queries.
        value_width = 2 * self.head_dim if self.lambda_init is not None else self.head_dim
        return attention_flops(seen(context, self.window), self.n_head * self.head_dim, self.n_head * value_width)

    def cache_values_per_token(self) -> int:
        return 2 * self.n_kv_head * self.head_dim


def differential_lambda_init(layer: int) -> float:
    """The paper's lambda_init for the layer of index `layer` (from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


class LatentAttention(SequenceMixer):
    """Multi-head latent attention (DeepSeek-V2/V3). Keys and values are expanded from one RMS-normalized latent
    of `kv_rank` per token (c_kv_b); each query and key head adds `rope_head_dim` channels that RoPE rotates,
    the key's shared by every head (decoupled RoPE, since a rotation cannot pass through the expansion). The
    cache holds only the latent and the rope key: kv_rank + rope_head_dim values a token and layer. Queries
    come through a latent of their own of `q_rank` when it is set."""

    def __init__(self, dim: int, n_head: int, head_dim: int, kv_rank: int, rope_head_dim: int, q_rank: int | None,
                 bias: bool, dropout: float, rotary: Rotary, *, window: int | None = None):
        super().__init__()
        self.n_head, self.head_dim, self.kv_rank, self.rope_head_dim = n_head, head_dim, kv_rank, rope_head_dim
        query_width = n_head * (head_dim + rope_head_dim)
        if q_rank is None:
            self.c_q = nn.Linear(dim, query_width, bias=bias)
        else:
            self.c_q = nn.Sequential(nn.Linear(dim, q_rank, bias=bias), nn.RMSNorm(q_rank, eps=1e-6),
                                     nn.Linear(q_rank, query_width, bias=False))
        self.c_kv_a = nn.Linear(dim, kv_rank + rope_head_dim, bias=bias)
        self.kv_norm = nn.RMSNorm(kv_rank, eps=1e-6)
        self.c_kv_b = nn.Linear(kv_rank, n_head * 2 * head_dim, bias=False)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)
        self.rotary = rotary
        self.window = window

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim + self.rope_head_dim).transpose(1, 2)
        latent, k_rope = self.c_kv_a(x).unsqueeze(1).split([self.kv_rank, self.rope_head_dim], dim=-1)

        def expand(k_rope: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            k_nope, v = self.c_kv_b(latent).view(B, -1, self.n_head, 2 * self.head_dim).transpose(1, 2).chunk(2, -1)
            return torch.cat((k_nope, k_rope.expand(-1, self.n_head, -1, -1)), dim=-1), v

        y = causal_attention(q, k_rope, self.kv_norm(latent), self.rotary, cache, layer,
                             self.dropout if self.training else 0.0, self.window, expand,
                             rotated=self.rope_head_dim)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        return attention_flops(seen(context, self.window), self.n_head * (self.head_dim + self.rope_head_dim),
                               self.n_head * self.head_dim)

    def cache_values_per_token(self) -> int:
        return self.kv_rank + self.rope_head_dim


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: Rotary | None,
                     cache: Cache | None, layer: int, dropout: float, window: int | None = None,
                     rebuild=None, rotated: int | None = None) -> torch.Tensor:
    """Causal attention of q (B, heads, T, head_dim) over k, v (B, kv_heads, T, head_dim) and the cached past:
    RoPE at the tokens' positions, this step's k, v stored in the cache, kv heads shared by query groups, each
    query seeing at most the last `window` tokens.

    A variant that caches something other than its keys and values passes that as k and v, and `rebuild`
    turns what the cache returns into keys and values; `rotated` is then how many of q's last channels RoPE
    rotates (all of k's)."""
    start = cache.position if cache else 0
    T = q.size(-2)
    if rotary is not None:
        # q and k rotated in one pass: fewer kernels, which at batch 1 are what decoding a token costs on CPU.
        if rotated is None:
            q, k = rotary(torch.cat((q, k), dim=1), start).split([q.size(1), k.size(1)], dim=1)
        else:
            q_pass, q_rot = q.split([q.size(-1) - rotated, rotated], dim=-1)
            q_rot, k = rotary(torch.cat((q_rot, k), dim=1), start).split([q.size(1), k.size(1)], dim=1)
            q = torch.cat((q_pass, q_rot), dim=-1)
    if cache is not None:
        make = (lambda: WindowState(window)) if window is not None else (lambda: KVState(cache.capacity))
        k, v = cache.state(layer, make).update(k, v, start)
    if rebuild is not None:
        k, v = rebuild(k, v)
    first = start + T - k.size(-2)
    windowed = window is not None and start + T - first > window
    return F.scaled_dot_product_attention(
        q, k, v,
        attn_mask=attention_mask(start, T, first, window, q.device) if windowed or (start > 0 and T > 1) else None,
        is_causal=start == 0 and T > 1 and not windowed,
        dropout_p=dropout,
        enable_gqa=k.size(1) != q.size(1),
    )


def attention_flops(context: int, query_width: int, value_width: int | None = None) -> int:
    """Training FLOPs per token of causal attention with `query_width` query channels (heads x head_dim) over
    `context` keys: a score product of each query channel and a value product of each of the `value_width`
    value channels (query_width unless given) with each key, forward and backward."""
    return FORWARD_AND_BACKWARD * 2 * context * (query_width + (value_width or query_width))


def seen(context: int, window: int | None) -> int:
    """The keys a query sees at `context` tokens of context: a sliding window's at most. (The masked kernel
    computes every score of the context; the count is what attention needs, as a sparse kernel computes it.)"""
    return context if window is None else min(context, window)


def attention_mask(start: int, length: int, first: int, window: int | None, device) -> torch.Tensor:
    """Boolean mask letting query start+i see the keys from `first` on up to start+i, and only the last
    `window` of them."""
    queries = torch.arange(start, start + length, device=device)[:, None]
    keys = torch.arange(first, start + length, device=device)[None, :]
    visible = keys <= queries
    return visible & (keys > queries - window) if window is not None else visible


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); `attn` is any sequence mixer, and
    a block without a feed-forward layer (mlp and ln_2 None) is the mixer alone."""

    def __init__(self, attn: nn.Module, mlp: nn.Module | None, ln_1: nn.Module, ln_2: nn.Module | None):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, routing)
        return x if self.mlp is None else x + self.mlp(self.ln_2(x), routing)


# "gpt2": normal(0, 0.02), the residual outputs (Sublayer.residual_outputs) scaled by 1/sqrt(2 n_layer) so that
# the residual stream's variance does not grow with depth; "plain": normal(0, 0.02) everywhere; "unit_mlp": gpt2's,
# but the MLP's input projection (Sublayer.mlp_inputs) at std 1/sqrt(its input width), so that the activation sees
# inputs of about unit scale: at std 0.02 and width 128 they stay near 0.5 for a whole short run, where GELU is
# nearly linear.
INITS = ("gpt2", "plain", "unit_mlp")


def init_weights(model: nn.Module, n_layer: int, init: str = "gpt2", std: float = 0.02) -> None:
    """Normal weights for linears and embeddings, zero biases, as `init` (one of INITS) says of the linears each
    Sublayer declares."""
    residual_scale = 1.0 if init == "plain" else 1 / math.sqrt(2 * n_layer)
    sublayers = [m for m in model.modules() if isinstance(m, Sublayer)]
    residual_outputs = {id(linear) for m in sublayers for linear in m.residual_outputs()}
    mlp_inputs = {id(linear) for m in sublayers for linear in m.mlp_inputs()}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if id(module) in residual_outputs:
                module_std = std * residual_scale
            elif init == "unit_mlp" and id(module) in mlp_inputs:
                module_std = 1 / math.sqrt(module.in_features)
            else:
                module_std = std
            nn.init.normal_(module.weight, mean=0.0, std=module_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
