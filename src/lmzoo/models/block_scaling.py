"""OpenELM layer-wise scaling on the gpt_rope block: attention heads and FFN width grow linearly with depth."""

from lmzoo.models.blocks import MLP, Attention
from lmzoo.models.transformer import Transformer


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
    """gpt_rope (RoPE, RMSNorm, SwiGLU, no biases) with OpenELM's per-layer heads and FFN widths;
    gqa_groups > 1 shares each key/value head among that many query heads."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_embd: int = 128, head_dim: int = 32,
                 qkv_multipliers: tuple[float, float] = (0.5, 1.0), ffn_multipliers: tuple[float, float] = (0.5, 4.0),
                 gqa_groups: int = 1, dropout: float = 0.0, rope_base: float = 10000.0, tie_embeddings: bool = True,
                 pad_vocab_to: int = 64, optim: dict | None = None):
        if n_embd % head_dim:
            raise ValueError(f"n_embd {n_embd} must be divisible by head_dim {head_dim}")
        widths = layer_widths(n_layer, n_embd, head_dim, tuple(qkv_multipliers), tuple(ffn_multipliers), gqa_groups)
        super().__init__(
            vocab_size, block_size, n_layer, n_embd // head_dim, n_embd, dropout=dropout, bias=False,
            positions="rope", norm="rmsnorm", rope_base=rope_base, tie_embeddings=tie_embeddings,
            pad_vocab_to=pad_vocab_to, optim=optim,
            make_attention=lambda layer, rotary: Attention(
                n_embd, widths[layer][0], head_dim, widths[layer][1], bias=False, dropout=dropout, rotary=rotary),
            make_mlp=lambda layer: MLP(n_embd, widths[layer][2], "silu", gated=True, bias=False, dropout=dropout),
        )
        self.widths = widths

    def describe(self) -> list[str]:
        rows = [f"{layer:>5} {q:>7} {kv:>8} {ffn:>9}" for layer, (q, kv, ffn) in enumerate(self.widths)]
        return super().describe() + ["layer  heads  kv heads  FFN width", *rows]
