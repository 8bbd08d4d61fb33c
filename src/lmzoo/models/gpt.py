"""GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings."""

from lmzoo.models.transformer import Transformer


class GPT(Transformer):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, bias: bool = True, pad_vocab_to: int = 64, optim: dict | None = None):
        super().__init__(
            vocab_size, block_size, n_layer, n_head, n_embd, dropout=dropout, bias=bias, positions="learned",
            norm="layernorm", activation="gelu", gated_mlp=False, tie_embeddings=True, pad_vocab_to=pad_vocab_to,
            optim=optim,
        )
