"""A modern GPT: RoPE, RMSNorm, SwiGLU MLP, no biases, pre-norm."""

from lmzoo.models.transformer import Transformer


class GPTRope(Transformer):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 n_kv_head: int | None = None, dropout: float = 0.0, rope_base: float = 10000.0,
                 tie_embeddings: bool = True, pad_vocab_to: int = 64, optim: dict | None = None):
        # SwiGLU's hidden width 8/3 * n_embd keeps the parameter count of a 4x GELU MLP.
        super().__init__(
            vocab_size, block_size, n_layer, n_head, n_embd, n_kv_head=n_kv_head, mlp_ratio=8 / 3, dropout=dropout,
            bias=False, positions="rope", norm="rmsnorm", activation="silu", gated_mlp=True, rope_base=rope_base,
            tie_embeddings=tie_embeddings, pad_vocab_to=pad_vocab_to, optim=optim,
        )
