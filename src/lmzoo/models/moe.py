"""gpt_rope with every feed-forward layer a sparse mixture of experts (Switch / Mixtral style)."""

from lmzoo.models.routing import MoE, SparseTransformer


class MoEGPT(SparseTransformer):
    """Each expert is a SwiGLU MLP of width mlp_ratio * n_embd; a token uses top_k of n_experts."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 n_kv_head: int | None = None, n_experts: int = 4, top_k: int = 2, mlp_ratio: float = 8 / 3,
                 capacity_factor: float | None = None, balance_weight: float = 0.01, z_weight: float = 0.001,
                 dropout: float = 0.0, rope_base: float = 10000.0, tie_embeddings: bool = True,
                 pad_vocab_to: int = 64, optim: dict | None = None):
        hidden = int(mlp_ratio * n_embd)
        super().__init__(
            vocab_size, block_size, n_layer, n_head, n_embd, n_kv_head=n_kv_head, dropout=dropout, bias=False,
            positions="rope", norm="rmsnorm", rope_base=rope_base, tie_embeddings=tie_embeddings,
            pad_vocab_to=pad_vocab_to, optim=optim,
            make_mlp=lambda layer: MoE(n_embd, hidden, n_experts, top_k, capacity_factor, balance_weight, z_weight,
                                       dropout=dropout),
        )
