"""Bigram: a vocab x vocab table whose row for token t holds the logits of the token after t."""

import torch
from torch import nn

from lmzoo.models.base import LanguageModel


class Bigram(LanguageModel):
    def __init__(self, vocab_size: int, optim: dict | None = None):
        # It reads one token, so the sampler feeds it the last token only.
        super().__init__(vocab_size, block_size=1, optim=optim)
        self.logits = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.logits.weight)

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        return self.logits(idx)
