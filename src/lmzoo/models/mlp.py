"""A Bengio-style MLP language model: the previous `context` tokens, embedded and concatenated,
through hidden layers of geometrically shrinking width, each with BatchNorm before its activation."""

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import LanguageModel
from lmzoo.models.blocks import ACTIVATIONS


class MLPLanguageModel(LanguageModel):
    """Hidden widths are hidden * 2^(n_hidden-1), ..., hidden * 2, hidden (4d, 2d, d for three layers).

    Positions with fewer than `context` predecessors see a padding token (id vocab_size) in their
    place, as makemore does, so every position of a training window is a training example.
    """

    def __init__(self, vocab_size: int, context: int = 8, n_embd: int = 32, hidden: int = 128, n_hidden: int = 3,
                 activation: str = "relu", optim: dict | None = None):
        super().__init__(vocab_size, block_size=context, optim=optim)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
        self.context = context
        self.wte = nn.Embedding(vocab_size + 1, n_embd)
        widths = [context * n_embd] + [hidden * 2 ** (n_hidden - 1 - i) for i in range(n_hidden)]
        # Biases before BatchNorm would be subtracted away again by it.
        self.hidden = nn.Sequential(*(
            nn.Sequential(nn.Linear(fan_in, fan_out, bias=False), nn.BatchNorm1d(fan_out), ACTIVATIONS[activation]())
            for fan_in, fan_out in zip(widths, widths[1:])
        ))
        self.lm_head = nn.Linear(widths[-1], vocab_size)

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        B, T = idx.shape
        padded = F.pad(idx, (self.context - 1, 0), value=self.vocab_size)
        windows = padded.unfold(1, self.context, 1)  # (B, T, context): tokens t-context+1 .. t
        x = self.wte(windows).reshape(B * T, -1)
        return self.lm_head(self.hidden(x)).view(B, T, -1)
