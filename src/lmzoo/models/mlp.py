"""A Bengio-style MLP language model: the previous `context` tokens, embedded and concatenated,
through hidden layers of geometrically shrinking width, each with BatchNorm before its activation.

With `input_encoding=permutation` a token is not embedded but encoded as a fixed permutation code, as the
seed's MLP did: a pattern of `code_bits` bits, half of them ones, distinct for each token.
"""

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import FORWARD_AND_BACKWARD, LanguageModel, ModelConfig, ModelOutput, linear_weights, require
from lmzoo.models.blocks import ACTIVATIONS
from lmzoo.models.cache import Cache


@dataclasses.dataclass(kw_only=True)
class MLPConfig(ModelConfig):
    # Tokens of context each prediction reads.
    context: int = 8
    n_embd: int = 32
    # Width of the last hidden layer; the ones before it double (4d, 2d, d for three layers).
    hidden: int = 128
    n_hidden: int = 3
    activation: str = "relu"
    # embedding: a learned vector of n_embd per token; permutation: a fixed code of code_bits bits per token.
    input_encoding: str = "embedding"
    code_bits: int = 12
    # target_params sizes the hidden layers.
    width_field = "hidden"

    def __post_init__(self):
        super().__post_init__()
        for name in ("context", "n_embd", "hidden", "n_hidden", "code_bits"):
            require(getattr(self, name) >= 1, f"{name} must be a positive integer", getattr(self, name))
        require(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}", self.activation)
        require(self.input_encoding in ENCODINGS, f"input_encoding must be one of {', '.join(ENCODINGS)}",
                self.input_encoding)
        if self.input_encoding == "permutation":
            codes = math.comb(self.code_bits, self.code_bits // 2)
            least = next(bits for bits in range(1, 64) if math.comb(bits, bits // 2) >= self.vocab_size)
            require(codes >= self.vocab_size, f"code_bits gives only C({self.code_bits}, {self.code_bits // 2}) = "
                    f"{codes} codes for a vocabulary of {self.vocab_size}; use code_bits={least} or more", self.code_bits)

    def build(self) -> "MLPLanguageModel":
        return MLPLanguageModel(self)


ENCODINGS = ("embedding", "permutation")
# The permutation codes are drawn from a generator of their own, so the same vocabulary always gets the same ones.
CODE_SEED = 0


def permutation_codes(count: int, bits: int, seed: int = CODE_SEED) -> torch.Tensor:
    """`count` distinct patterns of `bits` bits, bits // 2 of them ones, drawn at random: (count, bits)."""
    generator = torch.Generator().manual_seed(seed)
    seen, codes = set(), []
    while len(codes) < count:
        # A pattern's ones are where a random permutation of the positions puts its first bits // 2.
        drawn = torch.rand(count, bits, generator=generator, device="cpu").argsort(dim=1).argsort(dim=1) < bits // 2
        for code in drawn.numpy():
            if len(codes) < count and code.tobytes() not in seen:
                seen.add(code.tobytes())
                codes.append(code)
    # On the CPU, where the generator is, also when the model is built on another default device.
    return torch.tensor(np.stack(codes), dtype=torch.float32, device="cpu")


class MLPLanguageModel(LanguageModel):
    """Hidden widths are hidden * 2^(n_hidden-1), ..., hidden * 2, hidden.

    Positions with fewer than `context` predecessors see a padding token (id vocab_size) in their
    place, as makemore does, so every position of a training window is a training example. With permutation
    codes the padding token's code is all zeros, which no token's code is; the codes are a buffer, so
    checkpoints hold them.
    """

    config: MLPConfig
    lora_targets = {"hidden": ("hidden.*.0",), "head": ("lm_head",)}

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        c = config
        if c.input_encoding == "permutation":
            codes = permutation_codes(c.vocab_size, c.code_bits)
            codes = torch.cat([codes, codes.new_zeros(1, c.code_bits)])
            self.register_buffer("codes", codes)
            width = c.code_bits
        else:
            self.wte = nn.Embedding(c.vocab_size + 1, c.n_embd)
            width = c.n_embd
        widths = [c.context * width] + [c.hidden * 2 ** (c.n_hidden - 1 - i) for i in range(c.n_hidden)]
        # Biases before BatchNorm would be subtracted away again by it.
        self.hidden = nn.Sequential(*(
            nn.Sequential(nn.Linear(fan_in, fan_out, bias=False), nn.BatchNorm1d(fan_out), ACTIVATIONS[c.activation]())
            for fan_in, fan_out in zip(widths, widths[1:])
        ))
        self.lm_head = nn.Linear(widths[-1], c.vocab_size)

    @property
    def block_size(self) -> int:
        return self.config.context

    def forward(self, idx: torch.Tensor, cache: Cache | None = None, only_at: torch.Tensor | None = None
                ) -> ModelOutput:
        B, T = idx.shape
        context = self.config.context
        padded = F.pad(idx, (context - 1, 0), value=self.vocab_size)
        windows = padded.unfold(1, context, 1)  # (B, T, context): tokens t-context+1 .. t
        x = (self.codes[windows] if self.config.input_encoding == "permutation" else self.wte(windows)).reshape(B * T, -1)
        # BatchNorm's statistics are over every position: only the head skips the unscored ones.
        hidden = self.hidden(x)
        if only_at is None:
            return ModelOutput(self.lm_head(hidden).view(B, T, -1))
        return ModelOutput(self.lm_head(hidden[only_at.flatten()]))

    def output_head(self) -> nn.Module:
        return self.lm_head

    def flops_per_token(self, context: int) -> int:
        # The model reads its own `context` tokens, whatever the run's. Fixed permutation codes need no
        # gradient, so the first layer's backward computes its weights' gradient only.
        forward = 2 * linear_weights(self)
        fixed_input = 2 * self.hidden[0][0].weight.numel() if self.config.input_encoding == "permutation" else 0
        return FORWARD_AND_BACKWARD * forward - fixed_input
