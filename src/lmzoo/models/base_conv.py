"""Based's gated short convolution (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"; Zoology's zoology/mixers/base_conv.py, BaseConv): y = conv(x) * W x + b + x, a
depthwise causal convolution of a few taps gated by a linear projection of the same input, plus the input.

Before an attention layer it hands attention the shift that associative recall needs (each value's position
learns its key from the token before it), which Mamba-2's and Gated DeltaNet's own short convolutions hand to them:
Based's recall-memory figure gives its attention this layer first (Zoology's paper_configs/arxiv24_based_figure2:
a `Hybrid` of BaseConv and MHA). The preset conv_attention alternates the two.
"""

import dataclasses

import torch
from torch import nn

from lmzoo.models.base import Kind, PartSettings, SequenceMixer
from lmzoo.models.blocks import make_dropout
from lmzoo.models.cache import Cache
from lmzoo.models.recurrent import RecurrentState, ShortConv


@dataclasses.dataclass(kw_only=True)
class BaseConvSettings(PartSettings):
    """The taps of the short causal convolution (Based's 3)."""

    kernel: int = 3

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        self.require_counts(key, "kernel")


class BaseConv(SequenceMixer, name="base_conv"):
    """(B, T, dim) -> (B, T, dim), with the Attention's call signature; its decoding state is the convolution's last
    kernel - 1 inputs."""

    Settings = BaseConvSettings
    kind = Kind.FLAT
    lora_targets = {"proj": ("projection",)}

    @classmethod
    def build(cls, trunk, settings: BaseConvSettings, layer: int, rotary) -> "BaseConv":
        return cls(trunk.n_embd, settings.kernel, trunk.dropout)

    def __init__(self, dim: int, kernel: int = 3, dropout: float = 0.0):
        super().__init__()
        # Both with biases, as Zoology's nn.Linear and nn.Conv1d; the projection at the shared normal(0, 0.02) as
        # Zoology's _init_weights draws every linear (zoology/model.py), the convolution at nn.Conv1d's own init,
        # which Zoology keeps and the shared init leaves.
        self.projection = nn.Linear(dim, dim)
        self.conv = ShortConv(dim, kernel, bias=True)
        # On the mixer's output, as the Attention's.
        self.resid_dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0, routing=None) -> torch.Tensor:
        state = cache.state(layer, RecurrentState) if cache is not None else None
        return self.resid_dropout(self.conv(x, state) * self.projection(x) + x)

    def mixing_flops(self, context: int) -> int:
        """The convolution's taps (the projection is a linear the model counts)."""
        return self.conv.flops_per_token()

    def state_numel(self, context: int) -> int:
        """The convolution's last kernel - 1 inputs, whatever the length."""
        return self.conv.in_channels * (self.conv.kernel_size[0] - 1)

    def describe(self) -> str:
        return f"a gated short convolution of {self.conv.kernel_size[0]} taps"
