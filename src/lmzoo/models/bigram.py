"""Bigram: a vocab x vocab table whose row for token t holds the logits of the token after t."""

import dataclasses

import torch
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, LanguageModel, ModelConfig, ModelOutput
from lmzoo.models.cache import Cache


@dataclasses.dataclass(kw_only=True)
class BigramConfig(ModelConfig):
    def build(self) -> "Bigram":
        return Bigram(self)


class Bigram(LanguageModel):
    config: BigramConfig

    def __init__(self, config: BigramConfig):
        super().__init__(config)
        self.logits = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.logits.weight)

    @property
    def block_size(self) -> int:
        # It reads one token, so the sampler feeds it the last token only.
        return 1

    def forward(self, idx: torch.Tensor, cache: Cache | None = None, only_at: torch.Tensor | None = None
                ) -> ModelOutput:
        return ModelOutput(self.logits(idx if only_at is None else idx[only_at]))

    def scored_flops_per_token(self) -> int:
        # Its one lookup is its head.
        return self.flops_per_token(1)

    def flops_per_token(self, context: int) -> int:
        # A lookup does no matrix product (FlopCounterMode counts none); counted as the one-hot product it
        # stands for, restricted to the row a token uses: a multiply-add per logit.
        return FORWARD_AND_BACKWARD * 2 * self.vocab_size
