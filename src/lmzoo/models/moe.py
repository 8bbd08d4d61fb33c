"""A transformer whose every feed-forward layer is a sparse mixture of experts (Switch / Mixtral style)."""

import dataclasses

from lmzoo.models.base import require
from lmzoo.models.routing import MoE
from lmzoo.models.transformer import Transformer, TransformerConfig


@dataclasses.dataclass(kw_only=True)
class MoEConfig(TransformerConfig):
    """Each expert is an MLP of width mlp_ratio * n_embd, and a token uses top_k of n_experts."""

    n_experts: int = 4
    top_k: int = 2
    # An expert takes at most capacity_factor * tokens * top_k / n_experts tokens per batch; null: no limit.
    capacity_factor: float | None = None
    # Weights of the Switch load-balancing loss and the router z-loss, added to the training loss.
    balance_weight: float = 0.01
    z_weight: float = 0.001

    def __post_init__(self):
        super().__post_init__()
        require(self.n_experts >= 1, "n_experts must be a positive integer", self.n_experts)
        require(1 <= self.top_k <= self.n_experts, f"top_k must lie in 1..n_experts ({self.n_experts})", self.top_k)
        require(self.capacity_factor is None or self.capacity_factor > 0, "capacity_factor must be positive or null",
                self.capacity_factor)
        require(self.balance_weight >= 0, "balance_weight must be >= 0", self.balance_weight)
        require(self.z_weight >= 0, "z_weight must be >= 0", self.z_weight)

    def build(self) -> "MoETransformer":
        return MoETransformer(self)


class MoETransformer(Transformer):
    config: MoEConfig

    def feed_forward(self, layer: int) -> MoE:
        c = self.config
        return MoE(f"{layer}.mlp", c.n_embd, int(c.mlp_ratio * c.n_embd), c.n_experts, c.top_k, c.capacity_factor,
                   c.balance_weight, c.z_weight, c.activation, c.gated_mlp, c.bias, c.dropout)
