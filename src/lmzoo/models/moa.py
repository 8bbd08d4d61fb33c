"""A mixture of attention heads (ModuleFormer, Shen et al. 2023): a router picks a few of many attention heads per
token, which share one key/value head. With the sparse feed-forward part `moe` it is the preset moa_moe."""

import dataclasses

import torch
from torch import nn

from lmzoo.models.base import Kind, RoutingLog, SequenceMixer, Sublayer, require
from lmzoo.models.blocks import Rotary, attention_flops, causal_attention, make_dropout, rotated_head_dim
from lmzoo.models.cache import Cache
from lmzoo.models.routing import RoutedLayer, Router, RoutingSettings


@dataclasses.dataclass(kw_only=True)
class MixtureOfAttentionSettings(RoutingSettings):
    """The mixture's knobs (model.mixers.moa.KNOB): top_k of n_experts heads of head_dim per token."""

    n_experts: int = 8
    top_k: int = 4
    head_dim: int = 32

    former = {**RoutingSettings.former, "n_att_experts": "n_experts", "k_att": "top_k", "head_dim": "head_dim"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        self.require_counts(key, "head_dim")
        require(rotated_head_dim(trunk, self.head_dim), f"{key}.head_dim must be even with positions rope, which "
                "rotates each head's channels in pairs (or model.positions=learned)", self.head_dim)


class AttentionExpert(Sublayer):
    """One attention head's own query and output projections; keys and values are the layer's."""

    def __init__(self, dim: int, head_dim: int, bias: bool):
        super().__init__()
        self.c_q = nn.Linear(dim, head_dim, bias=bias)
        self.c_proj = nn.Linear(head_dim, dim, bias=bias)

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]


class MixtureOfAttention(RoutedLayer, SequenceMixer, name="moa"):
    """A router picks k_att of n_att_experts heads per token; the chosen heads' queries attend over one
    shared key/value head, and their outputs are mixed by the router's weights.

    The token's k_att query slots are the heads of a multi-query attention, so keys and values, and
    the KV cache, are those of a single head whatever experts each token picked.
    """

    Settings = MixtureOfAttentionSettings
    kind = Kind.GROWING
    replaces = ("lmzoo.models.moa_moe.MoAMoEConfig",)
    lora_targets = {"qkv": ("experts.*.c_q", "c_kv"), "proj": ("experts.*.c_proj",)}
    # Its heads are its own (model.mixers.moa.head_dim), rotated by the model's RoPE.
    trunk_knobs = ("rope_base",)

    @classmethod
    def build(cls, trunk, settings: MixtureOfAttentionSettings, layer: int, rotary) -> "MixtureOfAttention":
        return cls(f"{layer}.attn", trunk.n_embd, settings.head_dim, settings.n_experts, settings.top_k,
                   rotary(settings.head_dim), settings.balance_weight, settings.z_weight, trunk.bias, trunk.dropout)

    def __init__(self, label: str, dim: int, head_dim: int, n_att_experts: int, k_att: int, rotary: Rotary | None,
                 balance_weight: float = 0.01, z_weight: float = 0.001, bias: bool = False, dropout: float = 0.0):
        super().__init__(label)
        self.head_dim, self.k_att = head_dim, k_att
        self.router = Router(dim, n_att_experts, k_att, balance_weight, z_weight)
        self.c_kv = nn.Linear(dim, 2 * head_dim, bias=bias)
        self.experts = nn.ModuleList(AttentionExpert(dim, head_dim, bias) for _ in range(n_att_experts))
        self.rotary = rotary
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        flat = x.reshape(B * T, -1)
        decision = self.router(flat)
        if routing is not None:
            routing.record(self.label, decision)
        q = self.dispatch([e.c_q for e in self.experts], flat, decision.experts)
        q = q.view(B, T, self.k_att, self.head_dim).transpose(1, 2)
        k, v = self.c_kv(x).view(B, T, 1, 2 * self.head_dim).transpose(1, 2).chunk(2, dim=-1)
        y = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B * T, self.k_att, self.head_dim)
        out = self.dispatch([e.c_proj for e in self.experts], y, decision.experts)
        out = (out * decision.weights[..., None]).sum(dim=1)
        return self.resid_dropout(out.view_as(x))

    def mixing_flops(self, context: int) -> int:
        # A token's queries are its k_att heads.
        return attention_flops(context, self.k_att * self.head_dim)

    def state_numel(self, context: int) -> int:
        return 2 * self.head_dim * context

    def describe(self) -> str:
        return f"{self.k_att} of {len(self.experts)} heads of {self.head_dim}, one key/value head"
