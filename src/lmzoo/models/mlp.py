"""A Bengio-style MLP language model: the previous `context` tokens, embedded and concatenated,
through hidden layers of geometrically shrinking width, each with BatchNorm before its activation."""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import LanguageModel, ModelConfig, ModelOutput, require
from lmzoo.models.blocks import ACTIVATIONS
from lmzoo.models.cache import KVCache


@dataclasses.dataclass(kw_only=True)
class MLPConfig(ModelConfig):
    # Tokens of context each prediction reads.
    context: int = 8
    n_embd: int = 32
    # Width of the last hidden layer; the ones before it double (4d, 2d, d for three layers).
    hidden: int = 128
    n_hidden: int = 3
    activation: str = "relu"

    def __post_init__(self):
        super().__post_init__()
        for name in ("context", "n_embd", "hidden", "n_hidden"):
            require(getattr(self, name) >= 1, f"{name} must be a positive integer", getattr(self, name))
        require(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}", self.activation)

    def build(self) -> "MLPLanguageModel":
        return MLPLanguageModel(self)


class MLPLanguageModel(LanguageModel):
    """Hidden widths are hidden * 2^(n_hidden-1), ..., hidden * 2, hidden.

    Positions with fewer than `context` predecessors see a padding token (id vocab_size) in their
    place, as makemore does, so every position of a training window is a training example.
    """

    config: MLPConfig
    lora_targets = {"hidden": ("hidden.*.0",), "head": ("lm_head",)}

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size + 1, c.n_embd)
        widths = [c.context * c.n_embd] + [c.hidden * 2 ** (c.n_hidden - 1 - i) for i in range(c.n_hidden)]
        # Biases before BatchNorm would be subtracted away again by it.
        self.hidden = nn.Sequential(*(
            nn.Sequential(nn.Linear(fan_in, fan_out, bias=False), nn.BatchNorm1d(fan_out), ACTIVATIONS[c.activation]())
            for fan_in, fan_out in zip(widths, widths[1:])
        ))
        self.lm_head = nn.Linear(widths[-1], c.vocab_size)

    @property
    def block_size(self) -> int:
        return self.config.context

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> ModelOutput:
        B, T = idx.shape
        context = self.config.context
        padded = F.pad(idx, (context - 1, 0), value=self.vocab_size)
        windows = padded.unfold(1, context, 1)  # (B, T, context): tokens t-context+1 .. t
        x = self.wte(windows).reshape(B * T, -1)
        return ModelOutput(self.lm_head(self.hidden(x)).view(B, T, -1))
