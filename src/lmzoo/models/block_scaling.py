"""OpenELM layer-wise scaling: attention heads and FFN width grow linearly with depth."""

import dataclasses

from lmzoo.models.base import require
from lmzoo.models.blocks import MLP, Attention
from lmzoo.models.transformer import HeadDimConfig, Transformer


@dataclasses.dataclass(kw_only=True)
class BlockScalingConfig(HeadDimConfig):
    """Each layer's query heads and FFN width come from the multipliers; gqa_groups > 1 shares each
    key/value head among that many query heads."""

    # (first layer, last layer) multipliers of n_embd for the query width and the FFN width.
    qkv_multipliers: tuple[float, float] = (0.5, 1.0)
    ffn_multipliers: tuple[float, float] = (0.5, 4.0)
    gqa_groups: int = 1
    # Derived: the FFN multipliers replace it.
    mlp_ratio: float = dataclasses.field(init=False, default=1.0)

    def __post_init__(self):
        super().__post_init__()
        require(self.gqa_groups >= 1, "gqa_groups must be a positive integer", self.gqa_groups)
        for name in ("qkv_multipliers", "ffn_multipliers"):
            require(all(m > 0 for m in getattr(self, name)), f"{name} must be positive", getattr(self, name))

    @property
    def widths(self) -> list[tuple[int, int, int]]:
        """(query heads, key/value heads, FFN width) of each layer."""
        return layer_widths(self.n_layer, self.n_embd, self.head_dim, tuple(self.qkv_multipliers),
                            tuple(self.ffn_multipliers), self.gqa_groups)

    def build(self) -> "BlockScaling":
        return BlockScaling(self)


def make_divisible(value: float, divisor: int) -> int:
    """OpenELM's rounding: to the nearest multiple of divisor, at least divisor, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def layer_widths(n_layer: int, n_embd: int, head_dim: int, qkv_multipliers: tuple[float, float],
                 ffn_multipliers: tuple[float, float], gqa_groups: int = 1) -> list[tuple[int, int, int]]:
    """(query heads, key/value heads, FFN width) of each layer, as OpenELM computes them.

    Multipliers go linearly from min to max over the layers; the query width n_embd * qkv multiplier
    is rounded to a multiple of head_dim * gqa_groups, the FFN width n_embd * ffn multiplier to one of head_dim.
    """
    def linear(low: float, high: float, layer: int) -> float:
        return low + (high - low) * layer / max(n_layer - 1, 1)

    widths = []
    for layer in range(n_layer):
        n_head = make_divisible(n_embd * linear(*qkv_multipliers, layer), head_dim * gqa_groups) // head_dim
        ffn = make_divisible(n_embd * linear(*ffn_multipliers, layer), head_dim)
        widths.append((n_head, n_head // gqa_groups, ffn))
    return widths


class BlockScaling(Transformer):
    config: BlockScalingConfig

    def attention(self, layer: int, rotary) -> Attention:
        c = self.config
        n_head, n_kv_head, _ = c.widths[layer]
        return Attention(c.n_embd, n_head, c.head_dim, n_kv_head, c.bias, c.dropout, rotary(c.head_dim),
                         qk_norm=c.mixers["attention"].qk_norm)

    def feed_forward(self, layer: int) -> MLP:
        c = self.config
        return MLP(c.n_embd, c.widths[layer][2], c.activation, c.gated_mlp, c.bias, c.dropout)

