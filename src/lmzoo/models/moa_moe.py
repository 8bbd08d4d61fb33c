"""ModuleFormer-style: every attention layer a mixture of attention heads, every FFN a mixture of experts."""

import torch
from torch import nn

from lmzoo.models.blocks import KVCache, Rotary, causal_attention
from lmzoo.models.routing import MoE, Router, SparseTransformer, run_experts


class AttentionExpert(nn.Module):
    """One attention head's own query and output projections; keys and values are the layer's."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.c_q = nn.Linear(dim, head_dim, bias=False)
        self.c_proj = nn.Linear(head_dim, dim, bias=False)


class MixtureOfAttention(nn.Module):
    """A router picks k_att of n_att_experts heads per token; the chosen heads' queries attend over one
    shared key/value head, and their outputs are mixed by the router's weights.

    The token's k_att query slots are the heads of a multi-query attention, so keys and values, and
    the KV cache, are those of a single head whatever experts each token picked.
    """

    def __init__(self, dim: int, head_dim: int, n_att_experts: int, k_att: int, rotary: Rotary | None,
                 balance_weight: float = 0.01, z_weight: float = 0.001, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = k_att, 1, head_dim
        self.router = Router(dim, n_att_experts, k_att, balance_weight, z_weight)
        self.c_kv = nn.Linear(dim, 2 * head_dim, bias=False)
        self.experts = nn.ModuleList(AttentionExpert(dim, head_dim) for _ in range(n_att_experts))
        self.rotary = rotary
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        flat = x.reshape(B * T, -1)
        weights, experts = self.router(flat)
        q = run_experts([e.c_q for e in self.experts], flat, experts)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = self.c_kv(x).view(B, T, 1, 2 * self.head_dim).transpose(1, 2).chunk(2, dim=-1)
        y = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B * T, self.n_head, self.head_dim)
        out = (run_experts([e.c_proj for e in self.experts], y, experts) * weights[..., None]).sum(dim=1)
        return self.resid_dropout(out.view_as(x))

    def inactive_parameters(self) -> int:
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.router.n_experts - self.router.top_k) * per_expert


class MoAMoE(SparseTransformer):
    """RoPE, RMSNorm and no biases as gpt_rope; attention is a MixtureOfAttention of n_att_experts heads of
    head_dim (k_att per token), the FFN an MoE of n_experts SwiGLU experts (top_k per token)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_embd: int = 128, head_dim: int = 32,
                 n_att_experts: int = 8, k_att: int = 4, n_experts: int = 4, top_k: int = 2,
                 mlp_ratio: float = 8 / 3, capacity_factor: float | None = None, balance_weight: float = 0.01,
                 z_weight: float = 0.001, dropout: float = 0.0, rope_base: float = 10000.0,
                 tie_embeddings: bool = True, pad_vocab_to: int = 64, optim: dict | None = None):
        if n_embd % head_dim:
            raise ValueError(f"n_embd {n_embd} must be divisible by head_dim {head_dim}")
        hidden = int(mlp_ratio * n_embd)
        super().__init__(
            vocab_size, block_size, n_layer, n_embd // head_dim, n_embd, dropout=dropout, bias=False,
            positions="rope", norm="rmsnorm", rope_base=rope_base, tie_embeddings=tie_embeddings,
            pad_vocab_to=pad_vocab_to, optim=optim,
            make_attention=lambda layer, rotary: MixtureOfAttention(
                n_embd, head_dim, n_att_experts, k_att, rotary, balance_weight, z_weight, dropout),
            make_mlp=lambda layer: MoE(n_embd, hidden, n_experts, top_k, capacity_factor, balance_weight, z_weight,
                                       dropout=dropout),
        )
