"""A decoder-only transformer assembled from the shared blocks; GPT-2 and modern GPT differ only in choices."""

from collections.abc import Callable

import torch
from torch import nn

from lmzoo.models.base import LanguageModel
from lmzoo.models.blocks import MLP, Attention, Block, KVCache, Rotary, init_weights, make_norm


def padded(vocab_size: int, multiple: int) -> int:
    return -(-vocab_size // multiple) * multiple


class Transformer(LanguageModel):
    """Token embedding (+ learned positions or RoPE), a stack of blocks, a final norm and the LM head.

    The embedding table is padded to a multiple of `pad_vocab_to` for fast matmuls; the
    padded logits are cut off, so they never reach the loss or the sampler.

    Architectures that vary the layers pass `make_attention(layer, rotary)` or `make_mlp(layer)`,
    which build layer `layer`'s attention or feed-forward module in place of the uniform ones.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        n_kv_head: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        bias: bool = True,
        positions: str = "learned",
        norm: str = "layernorm",
        activation: str = "gelu",
        gated_mlp: bool = False,
        rope_base: float = 10000.0,
        tie_embeddings: bool = True,
        pad_vocab_to: int = 64,
        optim: dict | None = None,
        make_attention: Callable[[int, Rotary | None], nn.Module] | None = None,
        make_mlp: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__(vocab_size, block_size, optim)
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} must be divisible by n_head {n_head}")
        head_dim = n_embd // n_head
        hidden = int(mlp_ratio * n_embd)
        rotary = Rotary(head_dim, block_size, rope_base) if positions == "rope" else None
        make_attention = make_attention or (
            lambda layer, rotary: Attention(n_embd, n_head, head_dim, n_kv_head, bias, dropout, rotary))
        make_mlp = make_mlp or (lambda layer: MLP(n_embd, hidden, activation, gated_mlp, bias, dropout))
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(padded(vocab_size, pad_vocab_to), n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(
                Block(make_attention(layer, rotary), make_mlp(layer), make_norm(norm, n_embd, bias),
                      make_norm(norm, n_embd, bias))
                for layer in range(n_layer)
            ),
            ln_f=make_norm(norm, n_embd, bias),
        ))
        if positions == "learned":
            self.transformer["wpe"] = nn.Embedding(block_size, n_embd)
        elif positions != "rope":
            raise ValueError(f"unknown positions {positions!r}; use learned or rope")
        self.lm_head = nn.Linear(n_embd, padded(vocab_size, pad_vocab_to), bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        init_weights(self, n_layer)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = cache.position if cache else 0
        if start + idx.size(1) > self.block_size:
            raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds block_size {self.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + idx.size(1), device=idx.device))
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.position += idx.size(1)
        return self.lm_head(self.transformer.ln_f(x))[..., : self.vocab_size]

    def new_cache(self, batch_size: int) -> KVCache:
        attns = [block.attn for block in self.transformer.h]
        return KVCache(
            len(attns), batch_size, [a.n_kv_head for a in attns], attns[0].head_dim, self.block_size,
            self.lm_head.weight.device, self.lm_head.weight.dtype,
        )
