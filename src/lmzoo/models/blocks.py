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
from lmzoo.models.cache import Cache, KVState

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
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        cos, sin = angles.cos(), angles.sin()
        # Over the whole head: (x1, x2) * cos + (x2, x1) * (-sin, sin) is (x1 cos - x2 sin, x2 cos + x1 sin), and
        # (x2, x1) is x rolled by half a head: three operations where the two halves apart take seven.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x of shape (B, heads, T, head_dim) whose first position is `start`."""
        T = x.size(-2)
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


class Attention(SequenceMixer):
    """Causal self-attention with grouped-query heads, optional RoPE, and an optional KV cache."""

    def __init__(self, dim: int, n_head: int, head_dim: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, rotary: Rotary | None = None):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.n_kv_head = n_kv_head or n_head
        self.c_attn = nn.Linear(dim, (self.n_head + 2 * self.n_kv_head) * head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        heads = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k, v = heads.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        y = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        return attention_flops(context, self.n_head * self.head_dim)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: Rotary | None,
                     cache: Cache | None, layer: int, dropout: float) -> torch.Tensor:
    """Causal attention of q (B, heads, T, head_dim) over k, v (B, kv_heads, T, head_dim) and the cached past:
    RoPE at the tokens' positions, this step's k, v stored in the cache, kv heads shared by query groups."""
    start = cache.position if cache else 0
    T = q.size(-2)
    if rotary is not None:
        # q and k rotated in one pass: fewer kernels, which at batch 1 are what decoding a token costs on CPU.
        q, k = rotary(torch.cat((q, k), dim=1), start).split([q.size(1), k.size(1)], dim=1)
    if cache is not None:
        k, v = cache.state(layer, lambda: KVState(cache.capacity)).update(k, v, start)
    return F.scaled_dot_product_attention(
        q, k, v,
        attn_mask=causal_mask(start, T, q.device) if start > 0 and T > 1 else None,
        is_causal=start == 0 and T > 1,
        dropout_p=dropout,
        enable_gqa=k.size(1) != q.size(1),
    )


def attention_flops(context: int, query_width: int) -> int:
    """Training FLOPs per token of causal attention with `query_width` query channels (heads x head_dim) over
    `context` keys: a score and a value product of each channel with each key, forward and backward."""
    return FORWARD_AND_BACKWARD * 2 * 2 * context * query_width


def causal_mask(start: int, length: int, device) -> torch.Tensor:
    """Boolean mask letting query start+i see keys 0..start+i."""
    queries = torch.arange(start, start + length, device=device)[:, None]
    return torch.arange(start + length, device=device)[None, :] <= queries


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, ln_1: nn.Module, ln_2: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, routing)
        return x + self.mlp(self.ln_2(x), routing)


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
