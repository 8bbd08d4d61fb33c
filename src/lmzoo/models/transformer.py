"""A decoder-only transformer assembled from the shared blocks. GPT-2 and a modern GPT are the same class
with different choices (the presets conf/model/gpt.yaml and gpt_rope.yaml); architectures that vary the layers
subclass it and override `attention(layer, rotary)` or `feed_forward(layer)`, and their configs extend
its config."""

import dataclasses

import torch
from torch import nn

from lmzoo.errors import check_field_types
from lmzoo.models.base import (FORWARD_AND_BACKWARD, LanguageModel, ModelConfig, ModelOutput, ParameterCounts,
                               RoutingLog, SequenceMixer, linear_weights, require)
from lmzoo.models.blocks import (ACTIVATIONS, INITS, MLP, NORMS, Attention, Block, LatentAttention, Rotary,
                                 differential_lambda_init, init_weights, make_dropout, make_norm)
from lmzoo.models.cache import Cache
from lmzoo.models.gated_deltanet import GatedDeltaNet
from lmzoo.models.mamba2 import Mamba2
from lmzoo.models.routing import RoutedLayer

POSITIONS = ("learned", "rope")
ATTENTION_KINDS = ("standard", "mla", "differential")


@dataclasses.dataclass(kw_only=True)
class TransformerConfig(ModelConfig):
    """A decoder-only transformer. The defaults make it a modern GPT (the preset gpt_rope); the preset gpt
    (`lmzoo.models.preset_config("gpt", ...)`) is GPT-2's architecture."""

    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    # Key/value heads (grouped-query attention); null: as many as query heads.
    n_kv_head: int | None = None
    # Feed-forward width over n_embd; SwiGLU's 8/3 keeps the parameters of a 4x GELU MLP.
    mlp_ratio: float = 8 / 3
    dropout: float = 0.0
    bias: bool = False
    positions: str = "rope"
    norm: str = "rmsnorm"
    activation: str = "silu"
    # A GLU feed-forward (SwiGLU with silu): act(gate) * up.
    gated_mlp: bool = True
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    # Weight init, one of blocks.INITS: "gpt2" scales the residual projections by 1/sqrt(2 n_layer), "plain" does not.
    init: str = "gpt2"
    # The embedding table and head are padded to a multiple of this for fast matmuls.
    pad_vocab_to: int = 64
    # The sequence mixer of each layer, cycled over n_layer (layer i: layer_pattern[i % len]), from MIXERS:
    # "attention" (full causal attention, with the options below), "local_attention" (the same over a sliding
    # window of `window` tokens), "mamba2" or "gated_deltanet" (recurrent mixers, with the knobs below).
    layer_pattern: list[str] = dataclasses.field(default_factory=lambda: ["attention"])
    # The tokens a local_attention query sees, itself included.
    window: int | None = None
    # RMSNorm of each query and key head before the scores.
    qk_norm: bool = False
    # One of ATTENTION_KINDS: "standard"; "mla", multi-head latent attention; "differential" (Diff Transformer).
    attention: str = "standard"
    # mla: the rank of the latent keys and values come from (null: n_embd / 2), the RoPE channels added to each
    # query and key head (null: head_dim / 2), and the rank of the queries' latent (null: full-rank queries).
    kv_rank: int | None = None
    rope_head_dim: int | None = None
    q_rank: int | None = None
    # Mamba-2 layers ("mamba2"): inner width ssm_expand * n_embd in heads of ssm_head_dim, a state of ssm_state per
    # head channel, B and C shared by ssm_groups groups of heads.
    ssm_state: int = 64
    ssm_expand: int = 2
    ssm_head_dim: int = 64
    ssm_groups: int = 1
    # Gated DeltaNet layers ("gated_deltanet"): n_head heads, keys of head_dim, values gdn_value_expand times wider.
    gdn_value_expand: int = 2
    # Recurrent layers: taps of the short causal convolution, and the chunk length of the training scan.
    conv_kernel: int = 4
    chunk_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        require(self.block_size >= 1, "block_size must be a positive integer", self.block_size)
        require(self.n_layer >= 1, "n_layer must be a positive integer", self.n_layer)
        require(self.n_head >= 1, "n_head must be a positive integer", self.n_head)
        require(self.n_embd >= 1 and self.n_embd % self.n_head == 0,
                f"n_embd must be a positive multiple of n_head ({self.n_head})", self.n_embd)
        require(self.n_kv_head is None or (self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0),
                f"n_kv_head must divide n_head ({self.n_head}), or be null", self.n_kv_head)
        require(self.mlp_ratio >= 0, "mlp_ratio must be >= 0 (0: no feed-forward layer)", self.mlp_ratio)
        require(0 <= self.dropout < 1, "dropout must lie in [0, 1)", self.dropout)
        require(self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}", self.positions)
        require(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}", self.norm)
        require(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}", self.activation)
        require(self.init in INITS, f"init must be one of {', '.join(INITS)}", self.init)
        require(self.rope_base > 0, "rope_base must be positive", self.rope_base)
        require(self.pad_vocab_to >= 1, "pad_vocab_to must be a positive integer", self.pad_vocab_to)
        self.check_attention()

    def check_attention(self) -> None:
        require(len(self.layer_pattern) >= 1 and all(kind in MIXERS for kind in self.layer_pattern),
                f"layer_pattern must list layers of {', '.join(MIXERS)}", self.layer_pattern)
        if "local_attention" in self.layer_pattern[: self.n_layer]:
            require(self.window is not None and 1 <= self.window <= self.block_size,
                    f"window must lie in 1..block_size ({self.block_size}) for local_attention layers", self.window)
        require(self.attention in ATTENTION_KINDS, f"attention must be one of {', '.join(ATTENTION_KINDS)}",
                self.attention)
        if self.attention == "differential":
            require(self.n_head % 2 == 0 and self.kv_heads % 2 == 0,
                    "n_head and n_kv_head must be even for differential attention, which pairs heads",
                    (self.n_head, self.kv_heads))
        if self.attention == "mla":
            require(self.positions == "rope", "positions must be rope for mla, whose keys carry RoPE channels",
                    self.positions)
            require(not self.qk_norm, "qk_norm does not apply to mla, which normalizes its latents", self.qk_norm)
            require(self.n_kv_head in (None, self.n_head), "n_kv_head does not apply to mla, whose keys and values "
                    "all come from one latent per token (model.kv_rank sets its size); leave it null", self.n_kv_head)
            self.kv_rank = self.n_embd // 2 if self.kv_rank is None else self.kv_rank
            if self.rope_head_dim is None:
                self.rope_head_dim = max(2, self.head_dim // 4 * 2)
            require(self.kv_rank >= 1, "kv_rank must be a positive integer (the latent's rank)", self.kv_rank)
            require(self.rope_head_dim >= 2 and self.rope_head_dim % 2 == 0,
                    "rope_head_dim must be a positive even integer", self.rope_head_dim)
            require(self.q_rank is None or self.q_rank >= 1, "q_rank must be a positive integer or null", self.q_rank)
        self.check_recurrent()

    def check_recurrent(self) -> None:
        require(self.conv_kernel >= 1, "conv_kernel must be a positive integer", self.conv_kernel)
        require(self.chunk_size >= 1, "chunk_size must be a positive integer", self.chunk_size)
        if "mamba2" in self.layer_pattern:
            require(min(self.ssm_state, self.ssm_expand, self.ssm_head_dim, self.ssm_groups) >= 1,
                    "ssm_state, ssm_expand, ssm_head_dim and ssm_groups must be positive integers",
                    (self.ssm_state, self.ssm_expand, self.ssm_head_dim, self.ssm_groups))
            inner = self.ssm_expand * self.n_embd
            require(inner % self.ssm_head_dim == 0 and (inner // self.ssm_head_dim) % self.ssm_groups == 0,
                    f"ssm_head_dim must divide ssm_expand * n_embd ({inner}) into heads that ssm_groups divides",
                    self.ssm_head_dim)
        require(self.gdn_value_expand >= 1, "gdn_value_expand must be a positive integer", self.gdn_value_expand)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def mixer(self, layer: int) -> str:
        """The kind of layer `layer`'s sequence mixer (a name of MIXERS)."""
        return self.layer_pattern[layer % len(self.layer_pattern)]

    width_field = "n_embd"
    choices = ("positions", "norm", "activation", "gated_mlp", "attention", "qk_norm", "layer_pattern")

    def with_width(self, width: int) -> "TransformerConfig | None":
        """At `width`, the head count that keeps head_dim nearest to this config's: whole heads of an even size
        (RoPE rotates halves) within a factor 2 of it, a multiple of n_kv_head."""
        heads = [h for h in range(1, width // 2 + 1) if width % (2 * h) == 0 and near(width // h, self.head_dim)
                 and (self.n_kv_head is None or h % self.n_kv_head == 0)
                 and (self.attention != "differential" or h % 2 == 0)]
        if not heads:
            return None
        n_head = min(heads, key=lambda h: abs(width / h - self.head_dim))
        ssm_head_dim = self.ssm_head_dim
        if "mamba2" in self.layer_pattern:
            # Mamba-2's heads, like attention's, keep their width within a factor 2 of the preset's.
            inner = self.ssm_expand * width
            sizes = [d for d in range(2, inner + 1, 2)
                     if inner % d == 0 and (inner // d) % self.ssm_groups == 0 and near(d, self.ssm_head_dim)]
            if not sizes:
                return None
            ssm_head_dim = min(sizes, key=lambda d: abs(d - self.ssm_head_dim))
        return dataclasses.replace(self, n_embd=width, n_head=n_head, ssm_head_dim=ssm_head_dim)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def build(self) -> "Transformer":
        return Transformer(self)


@dataclasses.dataclass(kw_only=True)
class HeadDimConfig(TransformerConfig):
    """For architectures whose attention is sized by head_dim and decides its own heads per layer:
    n_head follows from n_embd / head_dim (it sets the rotary size), n_kv_head is not used."""

    head_dim: int = 32
    n_head: int = dataclasses.field(init=False, default=1)
    n_kv_head: int | None = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        check_field_types(self, "model")
        require(self.head_dim >= 1 and self.n_embd % self.head_dim == 0,
                f"n_embd must be a positive multiple of head_dim ({self.head_dim})", self.n_embd)
        self.n_head = self.n_embd // self.head_dim
        super().__post_init__()
        require(self.attention == "standard" and self.layer_pattern == ["attention"],
                f"attention and model.layer_pattern are gpt_rope's options; {type(self).__name__} builds its own "
                "attention", (self.attention, self.layer_pattern))

    def with_width(self, width: int) -> "HeadDimConfig | None":
        """At `width`, the even head_dim that divides it nearest to this config's, within a factor 2 of it (the
        heads follow from it)."""
        sizes = [d for d in range(2, width + 1, 2) if width % d == 0 and near(d, self.head_dim)]
        if not sizes:
            return None
        return dataclasses.replace(self, n_embd=width, head_dim=min(sizes, key=lambda d: abs(d - self.head_dim)))


def full_attention(c: TransformerConfig, layer: int, rotary: Rotary | None, window: int | None = None) -> nn.Module:
    """The attention `c.attention` names, over every past token or the last `window`."""
    if c.attention == "mla":
        return LatentAttention(c.n_embd, c.n_head, c.head_dim, c.kv_rank, c.rope_head_dim, c.q_rank, c.bias,
                               c.dropout, rotary, window=window)
    lambda_init = differential_lambda_init(layer) if c.attention == "differential" else None
    return Attention(c.n_embd, c.n_head, c.head_dim, c.n_kv_head, c.bias, c.dropout, rotary, qk_norm=c.qk_norm,
                     window=window, lambda_init=lambda_init)


# The sequence mixers a layer pattern names: name -> factory(config, layer, rotary).
MIXERS = {
    "attention": full_attention,
    "local_attention": lambda c, layer, rotary: full_attention(c, layer, rotary, c.window),
    "mamba2": lambda c, layer, rotary: Mamba2(c.n_embd, c.ssm_state, c.ssm_head_dim, c.ssm_expand, c.ssm_groups,
                                              c.conv_kernel, c.chunk_size, c.dropout),
    "gated_deltanet": lambda c, layer, rotary: GatedDeltaNet(c.n_embd, c.n_head, c.head_dim, c.gdn_value_expand,
                                                             c.conv_kernel, c.chunk_size, c.dropout),
}
# The mixers that attend, whose cache holds keys and values.
ATTENTION_MIXERS = ("attention", "local_attention")


def near(head_dim: int, preset: int) -> bool:
    """Whether a sized model's head_dim stays within a factor 2 of the preset's."""
    return preset / 2 <= head_dim <= 2 * preset


def padded(vocab_size: int, multiple: int) -> int:
    return -(-vocab_size // multiple) * multiple


class Transformer(LanguageModel):
    """Token embedding (+ learned positions or RoPE), a stack of pre-norm blocks, a final norm and the LM head.

    The padded logits past the true vocabulary are cut off, so they never reach the loss or the sampler.
    """

    config: TransformerConfig
    lora_targets = {
        # Latent attention's query, latent and expansion projections are its qkv.
        "qkv": ("transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_q", "transformer.h.*.attn.c_q.*",
                "transformer.h.*.attn.c_kv_a", "transformer.h.*.attn.c_kv_b",
                # A recurrent mixer's input projection (Mamba-2's; Gated DeltaNet's is c_attn).
                "transformer.h.*.attn.in_proj"),
        "proj": ("transformer.h.*.attn.c_proj",),
        "mlp": ("transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"),
    }

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        rotated = c.rope_head_dim if c.attention == "mla" else c.head_dim
        rotary = Rotary(rotated, c.block_size, c.rope_base) if c.positions == "rope" else None
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(padded(c.vocab_size, c.pad_vocab_to), c.n_embd),
            drop=make_dropout(c.dropout),
            h=nn.ModuleList(self.block(layer, rotary) for layer in range(c.n_layer)),
            ln_f=make_norm(c.norm, c.n_embd, c.bias),
        ))
        if c.positions == "learned":
            self.transformer["wpe"] = nn.Embedding(c.block_size, c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, padded(c.vocab_size, c.pad_vocab_to), bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        init_weights(self, c.n_layer, c.init)

    def attention(self, layer: int, rotary: Rotary | None) -> nn.Module:
        """Layer `layer`'s sequence mixer, as the config's layer pattern names it, unless a subclass varies it."""
        return MIXERS[self.config.mixer(layer)](self.config, layer, rotary)

    def block(self, layer: int, rotary: Rotary | None) -> Block:
        """Layer `layer`: its mixer, its feed-forward layer and their norms (the second only with a feed-forward)."""
        c = self.config
        mixer, feed_forward = self.attention(layer, rotary), self.feed_forward(layer)
        return Block(mixer, feed_forward, make_norm(c.norm, c.n_embd, c.bias),
                     make_norm(c.norm, c.n_embd, c.bias) if feed_forward is not None else None)

    def feed_forward(self, layer: int) -> nn.Module | None:
        """Layer `layer`'s feed-forward module; the config's uniform MLP unless a subclass varies it; none at
        mlp_ratio 0 (Mamba-2's blocks are the mixer alone)."""
        c = self.config
        if not c.mlp_ratio:
            return None
        return MLP(c.n_embd, int(c.mlp_ratio * c.n_embd), c.activation, c.gated_mlp, c.bias, c.dropout)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def forward(self, idx: torch.Tensor, cache: Cache | None = None) -> ModelOutput:
        start = cache.position if cache else 0
        read = idx.size(1) if cache is not None and cache.capacity is None else start + idx.size(1)
        if read > self.block_size:
            raise ValueError(f"sequence of {read} tokens exceeds block_size {self.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + idx.size(1), device=idx.device))
        x = self.transformer.drop(x)
        routing = RoutingLog()
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, routing)
        if cache is not None:
            cache.advance(idx.size(1))
        logits = self.lm_head(self.transformer.ln_f(x))[..., : self.vocab_size]
        return ModelOutput(logits, routing.aux_loss, routing.load)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the forward in place; routed layers keep their token dispatch eager."""
        for module in self.modules():
            if isinstance(module, RoutedLayer):
                module.keep_dispatch_eager()
        super().compile(*args, **kwargs)

    def new_cache(self) -> Cache:
        """A cache of block_size tokens; unbounded when no layer attends to every past token and positions are
        RoPE's, which are relative: a local layer keeps only its window, a recurrent one its state, and a query reads
        alike at any position."""
        c = self.config
        unbounded = all(c.mixer(layer) != "attention" for layer in range(c.n_layer)) and c.positions == "rope"
        return Cache(c.n_layer, None if unbounded else self.block_size)

    def output_head(self) -> nn.Module:
        return self.lm_head

    def flops_per_token(self, context: int) -> int:
        routed = [m for m in self.modules() if isinstance(m, RoutedLayer)]
        weights = linear_weights(self) - sum(m.inactive_linear_weights() for m in routed)
        mixing = sum(m.mixing_flops(context) for m in self.modules() if isinstance(m, SequenceMixer))
        return FORWARD_AND_BACKWARD * 2 * weights + mixing

    def cache_values(self, context: int) -> int:
        """The values the KV cache holds for a sequence of `context` tokens (a local layer at most `window`)."""
        c = self.config
        return sum(block.attn.cache_values_per_token() * (min(context, c.window) if c.mixer(layer) == "local_attention"
                                                          else context)
                   for layer, block in enumerate(self.transformer.h) if c.mixer(layer) in ATTENTION_MIXERS)

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the decoding cache of `batch` sequences at block_size tokens in the weights' dtype: keys and
        values of the attention layers, the recurrent layers' state (the same at any length)."""
        c = self.config
        recurrent = sum(block.attn.state_numel(c.block_size) for layer, block in enumerate(self.transformer.h)
                        if c.mixer(layer) not in ATTENTION_MIXERS)
        return batch * (self.cache_values(c.block_size) + recurrent) * self.transformer.wte.weight.element_size()

    def describe(self) -> list[str]:
        c = self.config
        lines = super().describe()
        if isinstance(c, HeadDimConfig):  # their own attention, which their own lines describe
            return lines
        options = {"mla": f" (kv_rank {c.kv_rank}, rope_head_dim {c.rope_head_dim}, q_rank {c.q_rank or 'full'})",
                   "standard": f" ({c.n_head} heads, {c.kv_heads} key/value heads)",
                   "differential": f" ({c.n_head // 2} pairs of heads, {c.kv_heads} key/value heads)"}
        pattern = ", ".join(f"{kind} (window {c.window})" if kind == "local_attention" else kind
                            for kind in c.layer_pattern)
        per_token = 4 * self.cache_values(c.block_size) / c.block_size
        standard = 4 * 2 * c.n_layer * c.n_embd
        if any(c.mixer(layer) not in ATTENTION_MIXERS for layer in range(c.n_layer)):
            grows = ", the same at any length" if self.new_cache().capacity is None else ""
            lines.append(f"decoding state per sequence: {self.state_bytes():,} bytes at {c.block_size} tokens{grows}")
        return lines + [
            f"attention: {c.attention}{options[c.attention]}{', qk_norm' if c.qk_norm else ''}; layers: {pattern}",
            f"KV cache at block_size {c.block_size} in fp32: {per_token:,.0f} B per token (multi-head attention of "
            f"these {c.n_head} heads: {standard:,} B)",
        ]

    def parameter_counts(self) -> ParameterCounts:
        total, _ = super().parameter_counts()
        inactive = sum(m.inactive_parameters() for m in self.modules() if isinstance(m, RoutedLayer))
        return ParameterCounts(total, total - inactive)
