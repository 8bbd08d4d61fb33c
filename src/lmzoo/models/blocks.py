"""The building blocks every architecture shares: one norm, one MLP, one attention, one block.

The attention is the sequence mixers `attention` (every past token) and `local_attention` (a sliding window), each
with its settings (grouped-query heads, QK-norm, the latent and differential variants) and its transformers classes
(GPT-2, Llama, Qwen2, Qwen3, DeepSeek-V3, DiffLlama: `AttentionHF`). Parameter names follow Hugging Face GPT-2
(c_attn, c_proj, c_fc, ln_1, ln_2) so weights map across.

A block's sublayers share two call signatures: attention is `attn(x, cache, layer, routing)` and the
feed-forward layer `mlp(x, routing)`. `routing` collects what routed sublayers decided in this forward
pass (see lmzoo.models.routing); dense sublayers ignore it.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.models.base import (FORWARD_AND_BACKWARD, FeedForward, Kind, PartSettings, RoutingLog, SequenceMixer,
                               Sublayer, require)
from lmzoo.models.cache import Cache, KVState, WindowState
from lmzoo.models.hf_layout import (HFLayout, Layout, gathered, laid_out, load_into, same_names, tied_and_checked,
                                    true_vocabulary, trunk_names)

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else nn.RMSNorm(dim, eps=1e-5)


def make_dropout(p: float) -> nn.Module:
    """Dropout, or nothing at p = 0: a Dropout of 0 still costs a call in every layer, and at batch 1 on CPU
    such calls are what a decoded token costs."""
    return Dropout(p) if p > 0 else nn.Identity()


class Dropout(nn.Dropout):
    """nn.Dropout by `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x


# A CPU's dropout mask is drawn in lanes of this many random bits (see dropout).
DROPOUT_BITS = 15


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element zeroed with probability p and the others scaled to keep its expectation, as F.dropout
    trains. By hand on a CPU, where PyTorch draws a random number an element (bernoulli_, about 10 ns each): here
    each 32-bit random word gives two elements 15 bits each, so p is rounded to a multiple of 2^-15 (0.2 to
    0.2000122) and the scale is exact for the rounded p; the mask is kept in x's dtype, as multiplying by a boolean
    one takes PyTorch's CPU kernels several times as long. Elsewhere PyTorch's fused kernels."""
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    levels = 1 << DROPOUT_BITS
    threshold = round(p * levels)
    # random_() fills an int32 with 31 random bits: each 16-bit half keeps its low 15.
    words = torch.empty((x.numel() + 1) // 2, dtype=torch.int32, device=x.device).random_()
    lanes = words.view(torch.int16)[: x.numel()].view(x.shape).bitwise_and_(levels - 1)
    kept = torch.ge(lanes, threshold, out=torch.empty_like(x))
    return x * kept * (levels / (levels - threshold))


ACTIVATIONS = {
    # GPT-2's tanh approximation; gelu_erf is the exact GELU (nanoGPT's), about twice as fast on CPU.
    "gelu": lambda: nn.GELU(approximate="tanh"),
    "gelu_erf": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def make_divisible(value: float, divisor: int) -> int:
    """OpenELM's rounding: to the nearest multiple of divisor, at least divisor, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled_width(trunk, multipliers: tuple[float, float], layer: int, divisor: int) -> int:
    """OpenELM's layer-wise scaling (Mehta et al. 2024): layer `layer`'s width, n_embd times a multiplier that goes
    linearly from multipliers[0] at the first layer to multipliers[1] at the last, rounded to `divisor`."""
    low, high = multipliers
    return make_divisible(trunk.n_embd * (low + (high - low) * layer / max(trunk.n_layer - 1, 1)), divisor)


@dataclasses.dataclass(kw_only=True)
class MLPSettings(PartSettings):
    """The MLP's knobs (model.ffns.mlp.KNOB)."""

    # Width over n_embd; SwiGLU's 8/3 keeps the parameters of a 4x GELU MLP.
    ratio: float = 8 / 3
    # One of ACTIVATIONS.
    activation: str = "silu"
    # A GLU (SwiGLU with silu): act(gate) * up.
    gated: bool = True
    # OpenELM's per-layer widths, replacing ratio: (first layer, last layer) multipliers of n_embd, rounded to
    # multiples of the heads' size; null: every layer at ratio.
    multipliers: tuple[float, float] | None = None

    choices = ("activation", "gated", "multipliers")
    former = {"mlp_ratio": "ratio", "activation": "activation", "gated_mlp": "gated", "ffn_multipliers": "multipliers"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        require(self.ratio > 0, f"{key}.ratio must be positive (an empty model.ffn_pattern has no feed-forward "
                "layer)", self.ratio)
        require(self.activation in ACTIVATIONS, f"{key}.activation must be one of {', '.join(ACTIVATIONS)}",
                self.activation)
        require(self.multipliers is None or min(self.multipliers) > 0, f"{key}.multipliers must be positive",
                self.multipliers)
        require(self.multipliers is None or self.ratio == 8 / 3, f"{key}.ratio does not apply with "
                f"model.{key}.multipliers, which give each layer's width; leave it out", self.ratio)

    def width(self, trunk, layer: int) -> int:
        """Layer `layer`'s hidden width."""
        if self.multipliers is None:
            return int(self.ratio * trunk.n_embd)
        return scaled_width(trunk, self.multipliers, layer, trunk.head_dim)


class MLP(FeedForward, name="mlp"):
    """Feed-forward layer; `gated` makes it a GLU (SwiGLU with silu): act(gate) * up."""

    Settings = MLPSettings

    @classmethod
    def build(cls, trunk, settings: MLPSettings, layer: int) -> "MLP":
        return cls(trunk.n_embd, settings.width(trunk, layer), settings.activation, settings.gated, trunk.bias,
                   trunk.dropout)

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", gated: bool = False, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.gated = gated
        self.c_fc = nn.Linear(dim, 2 * hidden if gated else hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor, routing: RoutingLog | None = None) -> torch.Tensor:
        h = self.c_fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mlp_inputs(self) -> list[nn.Module]:
        return [self.c_fc]

    lora_targets = {"mlp": ("c_fc", "c_proj")}

    def describe(self) -> str:
        gated = ", gated" if self.gated else ""
        return f"{self.c_proj.in_features} wide, {type(self.act).__name__.lower()}{gated}"


def rotated_head_dim(trunk, head_dim: int) -> bool:
    """Whether heads of `head_dim` channels can take the trunk's positions: RoPE (Rotary) rotates channel pairs."""
    return trunk.positions != "rope" or head_dim % 2 == 0


class Rotary(nn.Module):
    """Rotary position embedding (RoPE), rotating pairs (i, i + head_dim/2) as Llama does."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.tabulate(max_positions)

    def tabulate(self, positions: int) -> None:
        """The cosines and sines of positions 0..positions - 1 (those of a position never change with it)."""
        angles = torch.outer(torch.arange(positions, dtype=torch.float32, device=self.inv_freq.device), self.inv_freq)
        cos, sin = angles.cos(), angles.sin()
        # Over the whole head: (x1, x2) * cos + (x2, x1) * (-sin, sin) is (x1 cos - x2 sin, x2 cos + x1 sin), and
        # (x2, x1) is x rolled by half a head: three operations where the two halves apart take seven.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x of shape (B, heads, T, head_dim) whose first position is `start`."""
        T = x.size(-2)
        if start + T > self.cos.size(0):
            # Past block_size: a model of local layers only decodes on there (Transformer.new_cache). Normal
            # tensors even while sampling, so that training can use them afterwards.
            with torch.inference_mode(False):
                self.tabulate(2 * (start + T))
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


# Differential attention's lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init.
DIFFERENTIAL_LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


VARIANTS = ("standard", "mla", "differential")
# Up to how many keys a CPU's bf16 attention is computed by hand when it trains (attends_by_hand).
HAND_ATTENTION_KEYS = 256
# How differential attention lays its heads out: "paper", as microsoft/unilm's Diff-Transformer code
# (multihead_flashdiff_1.py; multihead_diffattn.py without grouped keys) does, with the learned scale of its per-pair
# norm; "diffllama", Hugging Face's DiffLlama (and lmzoo 0.2's), the same maps with the heads in another order and no
# scale. Either exports as DiffLlamaForCausalLM.
DIFFERENTIAL_LAYOUTS = ("paper", "diffllama")


@dataclasses.dataclass(kw_only=True)
class AttentionSettings(PartSettings):
    """The attention's knobs (model.mixers.attention.KNOB): its heads are the model's n_head of n_embd / n_head."""

    # Key/value heads (grouped-query attention); null: as many as query heads.
    n_kv_head: int | None = None
    # RMSNorm of each query and key head before the scores.
    qk_norm: bool = False
    # One of VARIANTS: "standard"; "mla", multi-head latent attention; "differential" (Diff Transformer).
    variant: str = "standard"
    # mla: the rank of the latent keys and values come from (null: n_embd / 2), the RoPE channels added to each
    # query and key head (null: head_dim / 2), and the rank of the queries' latent (null: full-rank queries).
    kv_rank: int | None = None
    rope_head_dim: int | None = None
    q_rank: int | None = None
    # OpenELM's per-layer heads: the query width of the first and last layer over n_embd, rounded to whole heads in
    # groups of gqa_groups query heads per key/value head; null: every layer has the model's n_head.
    qkv_multipliers: tuple[float, float] | None = None
    gqa_groups: int = 1
    # One of DIFFERENTIAL_LAYOUTS, for variant differential.
    differential_layout: str = "paper"

    choices = ("variant", "qk_norm", "qkv_multipliers")
    former = {"n_kv_head": "n_kv_head", "qk_norm": "qk_norm", "attention": "variant", "kv_rank": "kv_rank",
              "rope_head_dim": "rope_head_dim", "q_rank": "q_rank", "qkv_multipliers": "qkv_multipliers",
              "gqa_groups": "gqa_groups"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        heads, mla = trunk.n_head, self.variant == "mla"
        require(self.n_kv_head is None or (self.n_kv_head >= 1 and heads % self.n_kv_head == 0),
                f"{key}.n_kv_head must divide n_head ({heads}), or be null", self.n_kv_head)
        require(self.variant in VARIANTS, f"{key}.variant must be one of {', '.join(VARIANTS)}", self.variant)
        require(self.differential_layout in DIFFERENTIAL_LAYOUTS, f"{key}.differential_layout must be one of "
                f"{', '.join(DIFFERENTIAL_LAYOUTS)}", self.differential_layout)
        require(self.variant == "differential" or self.differential_layout == "paper", f"{key}.differential_layout "
                f"is differential attention's; set model.{key}.variant=differential or leave it out",
                self.differential_layout)
        require(self.variant != "differential" or (heads % 2 == 0 and (self.n_kv_head or heads) % 2 == 0),
                f"n_head and model.{key}.n_kv_head must be even for differential attention, which pairs heads",
                (heads, self.n_kv_head or heads))
        require(not mla or trunk.positions == "rope", f"positions must be rope for mla (model.{key}.variant), whose "
                "keys carry RoPE channels", trunk.positions)
        require(not (mla and self.qk_norm), f"{key}.qk_norm does not apply to mla, which normalizes its latents",
                self.qk_norm)
        require(not mla or self.n_kv_head in (None, heads), f"{key}.n_kv_head does not apply to mla, whose keys and "
                f"values all come from one latent per token (model.{key}.kv_rank sets its size); leave it null",
                self.n_kv_head)
        require(mla or (self.kv_rank, self.rope_head_dim, self.q_rank) == (None, None, None),
                f"{key}.kv_rank, rope_head_dim and q_rank are mla's; set model.{key}.variant=mla or leave them null",
                (self.kv_rank, self.rope_head_dim, self.q_rank))
        require(self.kv_rank is None or self.kv_rank >= 1, f"{key}.kv_rank must be a positive integer (the latent's "
                "rank) or null", self.kv_rank)
        require(self.rope_head_dim is None or (self.rope_head_dim >= 2 and self.rope_head_dim % 2 == 0),
                f"{key}.rope_head_dim must be a positive even integer or null", self.rope_head_dim)
        require(self.q_rank is None or self.q_rank >= 1, f"{key}.q_rank must be a positive integer or null",
                self.q_rank)
        require(mla or rotated_head_dim(trunk, trunk.head_dim), "n_embd / n_head must be even with positions rope, "
                "which rotates each head's channels in pairs: choose another model.n_head, or model.positions=learned",
                trunk.head_dim)
        scaled = self.qkv_multipliers is not None
        require(not scaled or min(self.qkv_multipliers) > 0, f"{key}.qkv_multipliers must be positive",
                self.qkv_multipliers)
        require(self.gqa_groups >= 1, f"{key}.gqa_groups must be a positive integer", self.gqa_groups)
        require(scaled or self.gqa_groups == 1, f"{key}.gqa_groups shares the heads model.{key}.qkv_multipliers gives; "
                f"without them, model.{key}.n_kv_head sets the key/value heads", self.gqa_groups)
        require(not scaled or (self.variant == "standard" and self.n_kv_head is None),
                f"{key}.qkv_multipliers gives each layer's heads (in groups of model.{key}.gqa_groups) for the "
                f"standard variant; leave model.{key}.variant and model.{key}.n_kv_head at their defaults",
                (self.variant, self.n_kv_head))

    def check_new(self, trunk, key: str) -> None:
        # A latent exists to be smaller than what it stands for. lmzoo 0.2's mla preset gave kv_rank 64 and
        # rope_head_dim 16 at every width, larger than that in small models, whose checkpoints still load.
        if self.variant != "mla":
            return
        require(self.kv_rank is None or self.kv_rank <= 2 * trunk.n_embd, f"{key}.kv_rank must be at most 2 x n_embd "
                f"({2 * trunk.n_embd}), the keys and values of a token its latent stands for; null: n_embd / 2",
                self.kv_rank)
        require(self.q_rank is None or self.q_rank <= trunk.n_embd, f"{key}.q_rank must be at most n_embd "
                f"({trunk.n_embd}), the width its latent compresses; null: full-rank queries", self.q_rank)
        require(self.rope_head_dim is None or self.rope_head_dim <= trunk.head_dim, f"{key}.rope_head_dim must be at "
                f"most the head size, n_embd / n_head ({trunk.head_dim}); null: half of it", self.rope_head_dim)

    @classmethod
    def upgraded(cls, knobs: dict) -> dict:
        """lmzoo 0.2's differential attention had DiffLlama's layout."""
        return {**knobs, "differential_layout": "diffllama"} if knobs.get("variant") == "differential" else knobs

    def heads(self, trunk, layer: int) -> tuple[int, int | None]:
        """Layer `layer`'s query heads and key/value heads (None: as many as query heads)."""
        if self.qkv_multipliers is None:
            return trunk.n_head, self.n_kv_head
        n_head = scaled_width(trunk, self.qkv_multipliers, layer, trunk.head_dim * self.gqa_groups) // trunk.head_dim
        return n_head, n_head // self.gqa_groups


@dataclasses.dataclass(kw_only=True)
class LocalAttentionSettings(AttentionSettings):
    """The attention's knobs, and the window of a local layer (model.mixers.local_attention.KNOB)."""

    # The tokens a query sees, itself included.
    window: int | None = None

    former = {**AttentionSettings.former, "window": "window"}

    def check(self, trunk, key: str) -> None:
        super().check(trunk, key)
        require(self.window is not None and 1 <= self.window <= trunk.block_size,
                f"{key}.window must lie in 1..block_size ({trunk.block_size})", self.window)


class Attention(SequenceMixer, name="attention"):
    """Causal self-attention with grouped-query heads, optional RoPE and a KV cache; the options of the
    attention variants lmzoo compares:

    - `qk_norm`: RMSNorm of each query and key head before the scores (Qwen3, OLMo 2, Gemma 3);
    - `window`: each query sees only the last `window` tokens, itself included (Mistral, Gemma 2/3); its cache
      keeps only them;
    - `lambda_init`: differential attention (Diff Transformer, Ye et al. 2025): query and key heads come in
      pairs whose two softmax maps are subtracted, the second weighted by a learned lambda, over values of
      twice the head size; each difference is RMS-normalized and scaled by 1 - lambda_init, the norm with a
      learned scale in the paper's layout (`differential_layout`, DIFFERENTIAL_LAYOUTS).
    """

    Settings = AttentionSettings
    lora_targets = {"qkv": ("c_attn",), "proj": ("c_proj",)}
    trunk_knobs = ("n_head", "rope_base")

    @classmethod
    def build(cls, trunk, settings: AttentionSettings, layer: int, rotary) -> SequenceMixer:
        """The attention `settings.variant` names, over every past token or the last `window` (a local layer's)."""
        window, head_dim = getattr(settings, "window", None), trunk.head_dim
        if settings.variant == "mla":
            rope_head_dim = settings.rope_head_dim or max(2, head_dim // 4 * 2)
            return LatentAttention(trunk.n_embd, trunk.n_head, head_dim, settings.kv_rank or trunk.n_embd // 2,
                                   rope_head_dim, settings.q_rank, trunk.bias, trunk.dropout, rotary(rope_head_dim),
                                   window=window)
        lambda_init = differential_lambda_init(layer) if settings.variant == "differential" else None
        n_head, n_kv_head = settings.heads(trunk, layer)
        return cls(trunk.n_embd, n_head, head_dim, n_kv_head, trunk.bias, trunk.dropout, rotary(head_dim),
                   qk_norm=settings.qk_norm, window=window, lambda_init=lambda_init,
                   differential_layout=settings.differential_layout)

    def __init__(self, dim: int, n_head: int, head_dim: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, rotary: Rotary | None = None, *, qk_norm: bool = False,
                 window: int | None = None, lambda_init: float | None = None, differential_layout: str = "paper"):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.n_kv_head = n_kv_head or n_head
        self.c_attn = nn.Linear(dim, (self.n_head + 2 * self.n_kv_head) * head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)
        self.rotary = rotary
        self.window = window
        if qk_norm:
            self.q_norm, self.k_norm = nn.RMSNorm(head_dim, eps=1e-5), nn.RMSNorm(head_dim, eps=1e-5)
        self.qk_norm = qk_norm
        self.lambda_init = lambda_init
        if lambda_init is not None:
            # lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init, the paper's
            # reparameterization, which keeps lambda's learning in step with the other weights'.
            for name in DIFFERENTIAL_LAMBDAS:
                self.register_parameter(name, nn.Parameter(torch.empty(head_dim).normal_(0, 0.1)))
        self.paper_layout = lambda_init is not None and differential_layout == "paper"
        if self.paper_layout:
            # The per-pair norm's learned scale, shared by the pairs: the paper's subln (microsoft/unilm,
            # Diff-Transformer/multihead_diffattn.py).
            self.pair_norm = nn.RMSNorm(2 * head_dim, eps=1e-5)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        heads = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k, v = heads.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.lambda_init is None:
            y = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0,
                                 self.window)
        else:
            y = self.differential(q, k, v, cache, layer)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def differential(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: Cache | None,
                     layer: int) -> torch.Tensor:
        """The differences of the paired maps (B, n_head / 2, T, 2 head_dim). In the paper's layout, as its code
        (microsoft/unilm, Diff-Transformer/multihead_flashdiff_1.py) lays them out: pair i is query heads 2i and
        2i + 1, key heads come in pairs 2m and 2m + 1 as its K1 and K2, and pair i reads key pair i // groups
        (groups = n_head / n_kv_head, the query pairs that share a key pair), its first map the first key head, its
        second the second, both over value pair i // groups (value heads 2m and 2m + 1 side by side). In DiffLlama's,
        query heads i and i + n_head / 2 pair up, as key and value heads do. Either runs as DiffLlama's: one
        attention of the first maps then the second ones over the key heads in that order."""
        def rebuild(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.paper_layout:
                keys = torch.cat((keys[:, 0::2], keys[:, 1::2]), dim=1)
                batch, heads, length, width = values.shape
                pairs = values.reshape(batch, heads // 2, 2, length, width).transpose(2, 3).flatten(3)
            else:
                first, second = values.chunk(2, dim=1)
                pairs = torch.cat((first, second), dim=-1)
            return keys, pairs.repeat(1, 2, 1, 1)

        if self.paper_layout:
            q = torch.cat((q[:, 0::2], q[:, 1::2]), dim=1)
        maps = causal_attention(q, k, v, self.rotary, cache, layer, self.dropout if self.training else 0.0,
                                self.window, rebuild)
        first, second = maps.chunk(2, dim=1)
        lam = (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
               - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)
        difference = first - lam * second
        y = self.pair_norm(difference) if self.paper_layout else F.rms_norm(difference, (2 * self.head_dim,), eps=1e-5)
        return (1 - self.lambda_init) * y

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        # Differential attention's values are twice as wide as its queries.
        value_width = 2 * self.head_dim if self.lambda_init is not None else self.head_dim
        return attention_flops(keys_computed(context, self.window), self.n_head * self.head_dim,
                               self.n_head * value_width)

    @property
    def kind(self) -> Kind:
        return Kind.GROWING if self.window is None else Kind.WINDOW

    def state_numel(self, context: int) -> int:
        return 2 * self.n_kv_head * self.head_dim * seen(context, self.window)

    def describe(self) -> str:
        window = f"window {self.window}; " if self.window is not None else ""
        if self.lambda_init is not None:
            heads = f"differential: {self.n_head // 2} pairs of heads, {self.n_kv_head} key/value heads"
        else:
            heads = f"{self.n_head} heads, {self.n_kv_head} key/value heads"
        return window + heads + (", qk_norm" if self.qk_norm else "")


class LocalAttention(Attention, name="local_attention"):
    """The attention over a sliding window (Mistral, Gemma 2/3): a query sees the last `window` tokens, itself
    included, and its cache keeps only them."""

    Settings = LocalAttentionSettings


def differential_lambda_init(layer: int) -> float:
    """The paper's lambda_init for the layer of index `layer` (from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


class LatentAttention(SequenceMixer):
    """Multi-head latent attention (DeepSeek-V2/V3). Keys and values are expanded from one RMS-normalized latent
    of `kv_rank` per token (c_kv_b); each query and key head adds `rope_head_dim` channels that RoPE rotates,
    the key's shared by every head (decoupled RoPE, since a rotation cannot pass through the expansion). The
    cache holds only the latent and the rope key: kv_rank + rope_head_dim values a token and layer. Queries
    come through a latent of their own of `q_rank` when it is set."""

    def __init__(self, dim: int, n_head: int, head_dim: int, kv_rank: int, rope_head_dim: int, q_rank: int | None,
                 bias: bool, dropout: float, rotary: Rotary, *, window: int | None = None):
        super().__init__()
        self.n_head, self.head_dim, self.kv_rank, self.rope_head_dim = n_head, head_dim, kv_rank, rope_head_dim
        self.q_rank = q_rank
        query_width = n_head * (head_dim + rope_head_dim)
        if q_rank is None:
            self.c_q = nn.Linear(dim, query_width, bias=bias)
        else:
            self.c_q = nn.Sequential(nn.Linear(dim, q_rank, bias=bias), nn.RMSNorm(q_rank, eps=1e-6),
                                     nn.Linear(q_rank, query_width, bias=False))
        self.c_kv_a = nn.Linear(dim, kv_rank + rope_head_dim, bias=bias)
        self.kv_norm = nn.RMSNorm(kv_rank, eps=1e-6)
        self.c_kv_b = nn.Linear(kv_rank, n_head * 2 * head_dim, bias=False)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = make_dropout(dropout)
        self.rotary = rotary
        self.window = window

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim + self.rope_head_dim).transpose(1, 2)
        latent, k_rope = self.c_kv_a(x).unsqueeze(1).split([self.kv_rank, self.rope_head_dim], dim=-1)

        def expand(k_rope: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            k_nope, v = self.c_kv_b(latent).view(B, -1, self.n_head, 2 * self.head_dim).transpose(1, 2).chunk(2, -1)
            return torch.cat((k_nope, k_rope.expand(-1, self.n_head, -1, -1)), dim=-1), v

        y = causal_attention(q, k_rope, self.kv_norm(latent), self.rotary, cache, layer,
                             self.dropout if self.training else 0.0, self.window, expand,
                             rotated=self.rope_head_dim)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def residual_outputs(self) -> list[nn.Module]:
        return [self.c_proj]

    def mixing_flops(self, context: int) -> int:
        keys = keys_computed(context, self.window)
        return attention_flops(keys, self.n_head * (self.head_dim + self.rope_head_dim), self.n_head * self.head_dim)

    # Its query, latent and expansion projections are its qkv.
    lora_targets = {"qkv": ("c_q", "c_q.*", "c_kv_a", "c_kv_b"), "proj": ("c_proj",)}
    kind = Attention.kind

    def state_numel(self, context: int) -> int:
        return (self.kv_rank + self.rope_head_dim) * seen(context, self.window)

    def describe(self) -> str:
        window = f"window {self.window}; " if self.window is not None else ""
        q_rank = self.q_rank or "full"
        return f"{window}mla: kv_rank {self.kv_rank}, rope_head_dim {self.rope_head_dim}, q_rank {q_rank}"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: Rotary | None,
                     cache: Cache | None, layer: int, dropout: float, window: int | None = None,
                     rebuild=None, rotated: int | None = None) -> torch.Tensor:
    """Causal attention of q (B, heads, T, head_dim) over k, v (B, kv_heads, T, head_dim) and the cached past:
    RoPE at the tokens' positions, this step's k, v stored in the cache, kv heads shared by query groups, each
    query seeing at most the last `window` tokens.

    A variant that caches something other than its keys and values passes that as k and v, and `rebuild`
    turns what the cache returns into keys and values; `rotated` is then how many of q's last channels RoPE
    rotates (all of k's)."""
    start = cache.position if cache else 0
    T = q.size(-2)
    if rotary is not None:
        # q and k rotated in one pass: fewer kernels, which at batch 1 are what decoding a token costs on CPU.
        if rotated is None:
            q, k = rotary(torch.cat((q, k), dim=1), start).split([q.size(1), k.size(1)], dim=1)
        else:
            q_pass, q_rot = q.split([q.size(-1) - rotated, rotated], dim=-1)
            q_rot, k = rotary(torch.cat((q_rot, k), dim=1), start).split([q.size(1), k.size(1)], dim=1)
            q = torch.cat((q_pass, q_rot), dim=-1)
    if cache is not None:
        make = (lambda: WindowState(window)) if window is not None else (lambda: KVState(cache.capacity))
        k, v = cache.state(layer, make).update(k, v, start)
    if rebuild is not None:
        k, v = rebuild(k, v)
    if window is not None and start == 0 and k.size(-2) == T > 2 * window:
        return banded_attention(q, k, v, window, dropout)
    first = start + T - k.size(-2)
    windowed = window is not None and start + T - first > window
    return attend(
        q, k, v,
        attn_mask=attention_mask(start, T, first, window, q.device) if windowed or (start > 0 and T > 1) else None,
        is_causal=start == 0 and T > 1 and not windowed,
        dropout_p=dropout,
    )


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float,
           is_causal: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention, its kv heads shared by groups of query heads; where attends_by_hand, the
    math PyTorch's kernels compute, by hand: the products in q's dtype, the softmax in at least fp32 (as Hugging
    Face's eager attention), lmzoo's `dropout` on the probabilities."""
    if not attends_by_hand(q, k, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                              enable_gqa=k.size(1) != q.size(1))
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        # Added as 0 or -inf: a masked_fill of the scores by a broadcast boolean mask takes about 3 times as long.
        scores = scores + torch.zeros(attn_mask.shape, dtype=scores.dtype, device=q.device).masked_fill_(~attn_mask,
                                                                                                        -math.inf)
    probabilities = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return (dropout(probabilities, dropout_p) if dropout_p else probabilities) @ v


def attends_by_hand(q: torch.Tensor, k: torch.Tensor, dropout_p: float) -> bool:
    """Whether a CPU computes attention by hand rather than with PyTorch's kernel: with dropout, which PyTorch's CPU
    kernels do not take; and in a bf16 training step over at most HAND_ATTENTION_KEYS keys, where PyTorch's CPU flash
    attention takes its bf16 backward in small mixed-precision products per block of queries (1.1x to 3.3x fp32's
    time over 64 to 256 keys, 0.8x to 0.9x over 512 to 1024) and by hand in bf16 a step of nanoGPT's Shakespeare
    config took 0.84x to 0.89x the time of attending in fp32 (AMD EPYC Zen 4 with AVX512-BF16; bench/README.md).
    A forward without gradients (sampling, validation) keeps the kernel, which keeps no scores."""
    if q.device.type != "cpu":
        return False
    return bool(dropout_p) or (q.dtype == torch.bfloat16 and torch.is_grad_enabled()
                               and k.size(-2) <= HAND_ATTENTION_KEYS)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout: float) -> torch.Tensor:
    """Causal attention over a sliding window of q (B, heads, T, head_dim) and k, v (B, kv_heads, T, ...) that
    computes only the band, where the masked kernel computes every key of the context: the queries in blocks of
    `window`, each block against its own keys and those of the block before (the first block's before are padding,
    masked), so a query costs 2 x window keys however long the context (keys_computed). By hand, as no kernel of
    PyTorch's skips the masked blocks on the CPU (FlexAttention's needs torch.compile there)."""
    batch, heads, T, _ = q.shape
    blocks = -(-T // window)
    pad = blocks * window - T
    # (B, heads, blocks, window, head_dim) and (B, kv_heads, blocks, 2 window, width), the blocks then into the batch.
    q = F.pad(q, (0, 0, 0, pad)).unflatten(2, (blocks, window))
    k, v = (F.pad(t, (0, 0, window, pad)).unfold(2, 2 * window, window).transpose(-1, -2) for t in (k, v))
    q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (q, k, v))
    # Query i of a block sees keys window + i - (window - 1) .. window + i of its 2 window: i < j <= i + window.
    query, key = torch.arange(window, device=q.device)[:, None], torch.arange(2 * window, device=q.device)[None, :]
    mask = ((key > query) & (key <= query + window)).expand(blocks, window, 2 * window).clone()
    mask[0, :, :window] = False
    y = attend(q, k, v, attn_mask=mask.repeat(batch, 1, 1)[:, None], dropout_p=dropout)
    return y.unflatten(0, (batch, blocks)).transpose(1, 2).flatten(2, 3)[:, :, :T]


def attention_flops(keys: float, query_width: int, value_width: int | None = None) -> int:
    """Training FLOPs per token of causal attention with `query_width` query channels (heads x head_dim) over
    `keys` keys a query (keys_computed): a score product of each query channel and a value product of each of the
    `value_width` value channels (query_width unless given) with each key, forward and backward."""
    return round(FORWARD_AND_BACKWARD * 2 * keys * (query_width + (value_width or query_width)))


def keys_computed(context: int, window: int | None) -> float:
    """The keys whose scores the kernel computes for a query at `context` tokens of context: every one of the
    context (the masked kernel computes those a window hides too), or, where the band is computed
    (banded_attention, past 2 windows), 2 windows for each query of the whole blocks it pads the context to."""
    if window is None or context <= 2 * window:
        return context
    return -(-context // window) * window * 2 * window / context


def seen(context: int, window: int | None) -> int:
    """The keys a query sees at `context` tokens of context: a sliding window's at most."""
    return context if window is None else min(context, window)


def attention_mask(start: int, length: int, first: int, window: int | None, device) -> torch.Tensor:
    """Boolean mask letting query start+i see the keys from `first` on up to start+i, and only the last
    `window` of them."""
    queries = torch.arange(start, start + length, device=device)[:, None]
    keys = torch.arange(first, start + length, device=device)[None, :]
    visible = keys <= queries
    return visible & (keys > queries - window) if window is not None else visible


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); `attn` is any sequence mixer, and
    a block without a feed-forward layer (mlp and ln_2 None) is the mixer alone."""

    def __init__(self, attn: nn.Module, mlp: nn.Module | None, ln_1: nn.Module, ln_2: nn.Module | None):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0,
                routing: RoutingLog | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, routing)
        return x if self.mlp is None else x + self.mlp(self.ln_2(x), routing)


# "gpt2": normal(0, 0.02), the residual outputs (Sublayer.residual_outputs) scaled by 1/sqrt(N), N the residual
# branches of the model (2 n_layer in blocks of a mixer and a feed-forward part, n_layer in blocks of a mixer alone),
# so that the residual stream's variance does not grow with depth; "plain": normal(0, 0.02) everywhere; "unit_mlp":
# gpt2's, but the MLP's input projection (Sublayer.mlp_inputs) at std 1/sqrt(its input width), so that the
# activation sees inputs of about unit scale: at std 0.02 and width 128 they stay near 0.5 for a whole short run,
# where GELU is nearly linear. Under each, a part whose reference initialises it otherwise then does so
# (Sublayer.reference_init).
INITS = ("gpt2", "plain", "unit_mlp")


def init_weights(model: nn.Module, branches: int, init: str = "gpt2", std: float = 0.02) -> None:
    """Normal weights for linears and embeddings, zero biases, as `init` (one of INITS) says of the linears each
    Sublayer declares, in a model of `branches` residual branches; then each part's own (Sublayer.reference_init)."""
    residual_scale = 1.0 if init == "plain" else 1 / math.sqrt(branches)
    sublayers = [m for m in model.modules() if isinstance(m, Sublayer)]
    residual_outputs = {id(linear) for m in sublayers for linear in m.residual_outputs()}
    mlp_inputs = {id(linear) for m in sublayers for linear in m.mlp_inputs()}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if id(module) in residual_outputs:
                module_std = std * residual_scale
            elif init == "unit_mlp" and id(module) in mlp_inputs:
                module_std = 1 / math.sqrt(module.in_features)
            else:
                module_std = std
            nn.init.normal_(module.weight, mean=0.0, std=module_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
    for sublayer in sublayers:
        sublayer.reference_init(residual_scale)


# GPT-2 stores these as Conv1D (in, out) matrices; nn.Linear holds (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class AttentionHF(HFLayout):
    """The transformers classes of a model whose every layer attends (global or local, any variant): in GPT-2's
    choices GPT2LMHeadModel; in Llama's LlamaForCausalLM, Qwen3ForCausalLM with QK-norm, Qwen2ForCausalLM with local
    layers, DeepseekV3ForCausalLM with latent attention, DiffLlamaForCausalLM with differential attention."""

    model_types = ("gpt2", "llama", "qwen2", "qwen3", "deepseek_v3", "diffllama")

    def exporter(self, model):
        config = model.config
        settings, mlp = attention_settings(config), uniform_mlp(config)
        if settings is None or settings.qkv_multipliers is not None or mlp is None:
            return None
        local = any(mixer.kind is Kind.WINDOW for mixer in model.mixers())
        if gpt2_shaped(config):
            fits = (mlp.ratio == 4.0 and settings.n_kv_head in (None, config.n_head) and not local
                    and not settings.qk_norm and settings.variant == "standard")
            return to_gpt2 if fits else None
        if not llama_shaped(config):
            return None
        if settings.variant == "mla":
            return None if local else to_deepseek_v3
        if settings.variant == "differential":
            return None if local or settings.qk_norm else to_diffllama
        if settings.qk_norm:
            return to_qwen3
        return to_qwen2 if local else to_llama

    def state_dict(self, weights, model, source):
        if gpt2_shaped(model.config):
            return gpt2_state_dict(weights, model, source)
        state = gathered(weights, llama_layout(model), source)
        for layer, block in enumerate(model.transformer.h):
            if getattr(block.attn, "paper_layout", False):
                ours = f"transformer.h.{layer}.attn."
                # DiffLlama's output projection holds the per-pair norm's scale (to_diffllama).
                state[ours + "c_attn.weight"] = state[ours + "c_attn.weight"][diffllama_rows(block.attn).argsort()]
                state[ours + "pair_norm.weight"] = torch.ones(2 * block.attn.head_dim)
        return tied_and_checked(state, model, source)


def attention_settings(config) -> AttentionSettings | None:
    """The settings every attending layer of `config` shares but for a local layer's window; None where they differ,
    which no transformers class has."""
    shared = [{field.name: getattr(settings, field.name) for field in dataclasses.fields(AttentionSettings)}
              for settings in config.mixers.values()]
    return AttentionSettings(**shared[0]) if all(values == shared[0] for values in shared) else None


def uniform_mlp(config) -> MLPSettings | None:
    """The settings of the feed-forward layers where every layer has the same dense MLP, as transformers classes
    have; None otherwise."""
    settings = config.ffns.get(MLP.name) if config.ffn_pattern == [MLP.name] else None
    return settings if settings is not None and settings.multipliers is None else None


def gpt2_shaped(config) -> bool:
    """GPT-2's choices: learned positions, LayerNorm, a GELU MLP."""
    mlp = uniform_mlp(config)
    return (config.positions, config.norm) == ("learned", "layernorm") and mlp is not None and (
        mlp.activation, mlp.gated) == ("gelu", False)


def llama_shaped(config) -> bool:
    """Llama's choices: RoPE, RMSNorm, a SwiGLU MLP, no biases."""
    mlp = uniform_mlp(config)
    return (config.positions, config.norm, config.bias) == ("rope", "rmsnorm", False) and mlp is not None and (
        mlp.activation, mlp.gated) == ("silu", True)


def to_gpt2(model, eot_id: int | None):
    from transformers import GPT2Config, GPT2LMHeadModel

    hp = model.config
    config = GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.block_size, n_embd=hp.n_embd, n_layer=hp.n_layer,
        n_head=hp.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=hp.tie_embeddings, bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    state = {name: tensor.T if name.endswith(CONV1D_WEIGHTS) else tensor
             for name, tensor in true_vocabulary(model).items()
             if not (hp.tie_embeddings and name == "lm_head.weight")}
    return load_into(GPT2LMHeadModel(config), state)


def gpt2_state_dict(weights: dict[str, torch.Tensor], model, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 weights renamed, transposed and padded into `model`'s state dict."""
    expected, state = model.state_dict(), {}
    for name, tensor in weights.items():
        # The causal-mask buffers (attn.bias, attn.masked_bias) and a tied head carry no weights of their own.
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (model.config.tie_embeddings
                                                                  and name == "lm_head.weight"):
            continue
        key = name if name == "lm_head.weight" else "transformer." + name.removeprefix("transformer.")
        # A model without biases was exported with zero ones (load_into).
        if key not in expected and key.endswith(".bias") and not tensor.any():
            continue
        state[key] = tensor.T if key.endswith(CONV1D_WEIGHTS) else tensor
    return tied_and_checked(state, model, source)


def llama_family(model, hf_class, config_class, eot_id: int | None, ours: dict[str, torch.Tensor] | None = None,
                 **settings):
    """`model` as `hf_class`, a transformers class of Llama's layout (llama_layout), from `ours` where given (the
    model's state dict cut to the true vocabulary, rearranged for it)."""
    hp = model.config
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    config = config_class(
        vocab_size=model.vocab_size, hidden_size=hp.n_embd, intermediate_size=mlp.c_proj.in_features,
        num_hidden_layers=hp.n_layer, num_attention_heads=attn.n_head, max_position_embeddings=model.block_size,
        rms_norm_eps=1e-5, rope_theta=hp.rope_base, hidden_act="silu", tie_word_embeddings=hp.tie_embeddings,
        bos_token_id=eot_id, eos_token_id=eot_id, **settings,
    )
    return load_into(hf_class(config), laid_out(model, llama_layout(model), ours))


def to_llama(model, eot_id: int | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, LlamaForCausalLM, LlamaConfig, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, mlp_bias=False)


def sliding_windows(model) -> dict:
    """Qwen's settings for the local layers: their window and which layers they are."""
    mixers = model.mixers()
    windows = [mixer.window for mixer in mixers if mixer.kind is Kind.WINDOW]
    return dict(use_sliding_window=bool(windows), sliding_window=windows[0] if windows else None,
                layer_types=["sliding_attention" if mixer.kind is Kind.WINDOW else "full_attention"
                             for mixer in mixers])


def to_qwen2(model, eot_id: int | None):
    """Qwen2 has per-layer sliding windows and no QK-norm; its q, k, v biases are exported as zeros."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, Qwen2ForCausalLM, Qwen2Config, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, **sliding_windows(model))


def to_qwen3(model, eot_id: int | None):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    attn = model.transformer.h[0].attn
    return llama_family(model, Qwen3ForCausalLM, Qwen3Config, eot_id, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, **sliding_windows(model))


def to_diffllama(model, eot_id: int | None):
    """DiffLlama's heads are the paper's in another order (diffllama_rows), and its per-pair norm has no scale: the
    paper layout's goes into the output projection's columns, which that norm's output meets first."""
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    attn, ours = model.transformer.h[0].attn, true_vocabulary(model)
    for layer, block in enumerate(model.transformer.h):
        if block.attn.paper_layout:
            name = f"transformer.h.{layer}.attn."
            ours[name + "c_attn.weight"] = ours[name + "c_attn.weight"][diffllama_rows(block.attn)]
            ours[name + "c_proj.weight"] = ours[name + "c_proj.weight"] * ours[name + "pair_norm.weight"].repeat(
                block.attn.n_head // 2)
    return llama_family(model, DiffLlamaForCausalLM, DiffLlamaConfig, eot_id, ours, num_key_value_heads=attn.n_kv_head,
                        head_dim=attn.head_dim, attention_bias=False, mlp_bias=False)


def diffllama_rows(a: Attention) -> torch.Tensor:
    """The rows of a paper-layout differential attention's c_attn in DiffLlama's order: of its query, key and value
    heads each, the even ones (the first of each pair), then the odd ones."""
    def heads(count: int, start: int) -> torch.Tensor:
        order = [*range(0, count, 2), *range(1, count, 2)]
        return torch.cat([torch.arange(start + h * a.head_dim, start + (h + 1) * a.head_dim) for h in order])

    queries, keys = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
    return torch.cat((heads(a.n_head, 0), heads(a.n_kv_head, queries), heads(a.n_kv_head, queries + keys)))


def to_deepseek_v3(model, eot_id: int | None):
    """Every layer dense (first_k_dense_replace = n_layer), RoPE on the halves of the rope channels as lmzoo's."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hp, attn = model.config, model.transformer.h[0].attn
    return llama_family(model, DeepseekV3ForCausalLM, DeepseekV3Config, eot_id, num_key_value_heads=hp.n_head,
                        kv_lora_rank=attn.kv_rank, q_lora_rank=attn.q_rank, qk_rope_head_dim=attn.rope_head_dim,
                        qk_nope_head_dim=attn.head_dim, v_head_dim=attn.head_dim, first_k_dense_replace=hp.n_layer,
                        rope_interleave=False, attention_bias=False)


def llama_layout(model) -> Layout:
    """Each lmzoo weight, the weights of Llama's layout it is made of (Qwen2, Qwen3, DiffLlama and DeepSeek-V3
    share it, each with what its attention adds), and their rows in it (None: all of them)."""
    layout = trunk_names(model, "model.embed_tokens.weight", "model.norm.weight")
    for i, block in enumerate(model.transformer.h):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        width = block.mlp.c_proj.in_features
        layout += [
            (ours + "ln_1.weight", [theirs + "input_layernorm.weight"], None),
            *attention_layout(block.attn, ours + "attn.", theirs + "self_attn."),
            (ours + "attn.c_proj.weight", [theirs + "self_attn.o_proj.weight"], None),
            (ours + "ln_2.weight", [theirs + "post_attention_layernorm.weight"], None),
            # c_fc computes [gate, up] in one matmul; Llama has a projection for each.
            (ours + "mlp.c_fc.weight", [theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight"], [width, width]),
            (ours + "mlp.c_proj.weight", [theirs + "mlp.down_proj.weight"], None),
        ]
    return layout


def attention_layout(a, ours: str, theirs: str) -> Layout:
    """The input side of an attention's weights in Llama's layout: q, k, v (with Qwen3's QK-norm and DiffLlama's
    lambdas), or DeepSeek-V3's latent projections."""
    if isinstance(a, LatentAttention):
        query = ([(ours + "c_q.weight", [theirs + "q_proj.weight"], None)] if isinstance(a.c_q, nn.Linear) else
                 [(ours + f"c_q.{index}.weight", [theirs + name], None)
                  for index, name in enumerate(("q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"))])
        return [*query, (ours + "c_kv_a.weight", [theirs + "kv_a_proj_with_mqa.weight"], None),
                (ours + "kv_norm.weight", [theirs + "kv_a_layernorm.weight"], None),
                (ours + "c_kv_b.weight", [theirs + "kv_b_proj.weight"], None)]
    # c_attn computes [q, k, v] in one matmul; Llama has a projection for each.
    qkv = [a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim]
    layout = [(ours + "c_attn.weight", [theirs + f"{p}_proj.weight" for p in "qkv"], qkv)]
    if a.qk_norm:
        layout += same_names(ours, theirs, ["q_norm.weight", "k_norm.weight"])
    if a.lambda_init is not None:
        layout += same_names(ours, theirs, list(DIFFERENTIAL_LAMBDAS))
    return layout


# GPT-2's choices, and a local/global pattern whose greedy texts in tests/test_interop.py run past its window.
GPT2 = dict(positions="learned", norm="layernorm", ffns={MLP.name: dict(ratio=4.0, activation="gelu", gated=False)},
            bias=True, tie_embeddings=True)
LOCAL_GLOBAL = dict(layer_pattern=[LocalAttention.name, Attention.name],
                    mixers={LocalAttention.name: dict(window=5)})
# Every layer of a model that attends, in any of the attention's variants, has these transformers classes.
Attention.hf = LatentAttention.hf = AttentionHF(examples={
    "gpt": (dict(n_head=2, **GPT2), "GPT2LMHeadModel"),
    "gpt_no_bias": (dict(n_head=2, **{**GPT2, "bias": False}), "GPT2LMHeadModel"),
    "gpt_untied": (dict(n_head=2, **{**GPT2, "tie_embeddings": False}), "GPT2LMHeadModel"),
    "gpt_rope_gqa_untied": (dict(n_head=4, mixers={Attention.name: dict(n_kv_head=2)}, rope_base=500.0,
                                 tie_embeddings=False), "LlamaForCausalLM"),
    "qk_norm_gqa": (dict(n_head=4, mixers={Attention.name: dict(n_kv_head=2, qk_norm=True)}), "Qwen3ForCausalLM"),
    "qk_norm_local_global": (dict(n_head=2, layer_pattern=LOCAL_GLOBAL["layer_pattern"],
                                  mixers={LocalAttention.name: dict(window=5, qk_norm=True),
                                          Attention.name: dict(qk_norm=True)}), "Qwen3ForCausalLM"),
    "local_global": (dict(n_head=2, tie_embeddings=False, **LOCAL_GLOBAL), "Qwen2ForCausalLM"),
    "mla": (dict(n_head=2, mixers={Attention.name: dict(variant="mla", kv_rank=16, rope_head_dim=8)}),
            "DeepseekV3ForCausalLM"),
    "mla_query_latent_untied": (dict(n_head=2, tie_embeddings=False, mixers={Attention.name: dict(
        variant="mla", kv_rank=16, rope_head_dim=8, q_rank=12)}), "DeepseekV3ForCausalLM"),
    "differential_gqa": (dict(n_head=8, mixers={Attention.name: dict(n_kv_head=4, variant="differential")}),
                         "DiffLlamaForCausalLM"),
    "differential_gqa_diffllama_layout": (dict(n_head=4, mixers={Attention.name: dict(
        n_kv_head=2, variant="differential", differential_layout="diffllama")}), "DiffLlamaForCausalLM"),
    # Latent attention over a window, and differential attention with QK-norm, have no transformers class.
    "mla_local": (dict(n_head=2, layer_pattern=LOCAL_GLOBAL["layer_pattern"], mixers={
        name: dict(variant="mla", kv_rank=16, rope_head_dim=8, **window)
        for name, window in ((LocalAttention.name, dict(window=5)), (Attention.name, {}))}), None),
    "differential_qk_norm": (dict(n_head=2, mixers={Attention.name: dict(variant="differential", qk_norm=True)}),
                             None),
})
