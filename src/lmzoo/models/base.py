"""The contract between a model and everything that uses it: the trainer, the sampler, checkpoints and LoRA.

A model is a plain `torch.nn.Module` built from a config dataclass (`config.build()`). It maps token ids
(B, T) to a `ModelOutput`, whose logits cover the true vocabulary. Attention models read up to
`block_size` tokens and sample with a `Cache` from `new_cache` (each layer keeps its own state in it); fixed-context models (bigram: 1 token,
MLP: `context` tokens) predict every position of a longer window from its own few predecessors.
"""

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import nn

from lmzoo.errors import UserError, check_field_types
from lmzoo.models.cache import Cache


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    """An architecture's hyper-parameters. Subclasses add theirs, check them in `__post_init__`, and
    return their model from `build()`."""

    vocab_size: int
    # Size the model to about this many active parameters (lmzoo.models.base.sized); null: as configured.
    target_params: float | None = None
    # The field that sets the architecture's width, for target_params; None: it has none.
    width_field: ClassVar[str | None] = None
    # The settings that make the architecture what it is, rather than its size or training: which preset a config
    # is (lmzoo.models.presets.preset_of), what init_from and a resumed run must keep.
    choices: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_field_types(self, "model")
        require(self.vocab_size >= 1, "vocab_size must be a positive integer", self.vocab_size)
        require(self.target_params is None or self.target_params > 0, "target_params must be positive or null",
                self.target_params)

    def with_width(self, width: int) -> "ModelConfig | None":
        """This config at `width` (its width_field) with what follows from it, such as the head count; None
        when no valid config has that width."""
        return dataclasses.replace(self, **{self.width_field: width})

    def build(self) -> "LanguageModel":
        raise NotImplementedError

    def as_dict(self) -> dict:
        """The arguments that rebuild this config (derived fields left out)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.init}


# How close to model.target_params the active parameters must come.
SIZE_TOLERANCE = 0.05


def sized(config: ModelConfig) -> ModelConfig:
    """The config at the width whose model's active parameters come nearest to config.target_params (within
    SIZE_TOLERANCE, or a UserError naming the nearest widths); the config itself without a target."""
    if config.target_params is None:
        return config
    if config.width_field is None:
        raise UserError(f"model.target_params does not apply to {type(config).__name__}: it has no width to size")
    target, counts = config.target_params, {}

    def active(width: int) -> int | None:
        """Active parameters at `width`, None where no valid config has it; built on the meta device, which
        gives the shapes without memory or initialization."""
        if width not in counts:
            candidate = config.with_width(width)
            with torch.device("meta"):
                counts[width] = candidate and candidate.build().parameter_counts().active
        return counts[width]

    def least_valid(width: int) -> int:
        return next(w for w in range(width, 2 * width + 64) if active(w) is not None)

    def at_least(width: int) -> int:
        """Active parameters at the least valid width from `width` on."""
        return active(least_valid(width))

    # Active parameters grow with the width: double to pass the target, bisect, then look around.
    high = 1
    while at_least(high) < target and high < 2**20:
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if at_least(middle) < target else (low, middle)
    # A target below the smallest valid model leaves no valid width near it: the smallest one is the nearest.
    widths = [w for w in range(max(1, low - 8), high + 9) if active(w) is not None] or [least_valid(high)]
    best = min(widths, key=lambda w: abs(active(w) - target))
    if abs(active(best) - target) > SIZE_TOLERANCE * target:
        below = max((w for w in widths if active(w) < target), default=None)
        above = min((w for w in widths if active(w) >= target), default=None)
        nearest = ", ".join(f"model.{config.width_field}={w} gives {active(w):,}" for w in (below, above) if w)
        raise UserError(f"model.target_params={target:g}: no {config.width_field} comes within {SIZE_TOLERANCE:.0%} "
                        f"of it ({nearest} active parameters); change the target or the depth")
    return config.with_width(best)


def require(condition: bool, message: str, value) -> None:
    """Refuse a config value: `model.<message>, got <value>`."""
    if not condition:
        raise UserError(f"model.{message}, got {value!r}")


@dataclasses.dataclass
class ModelOutput:
    """What a forward pass returns.

    `aux_loss` is a training-only loss the trainer adds to the cross-entropy (router load balancing);
    `expert_load` holds, per router, the share of tokens each expert received. Dense models leave both empty.
    """

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None
    expert_load: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


# Training multiplies the forward pass's matrix FLOPs by 3: the backward pass computes the gradients of both
# a product's inputs and its weights.
FORWARD_AND_BACKWARD = 3


def linear_weights(module: nn.Module) -> int:
    """The weights of `module`'s nn.Linear layers: a token's multiply-adds through all of them."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


class ParameterCounts(NamedTuple):
    total: int
    # Those a token uses: fewer than total in sparse models.
    active: int


Role = Literal["embeddings", "head", "hidden", "other"]


class ParameterGroups(NamedTuple):
    """Every parameter of a model once, by role, each group in the model's parameter order. Muon trains the
    hidden matrices and AdamW the rest; weight decay applies to every group but `other`."""

    # Token (and position) embedding tables; a head tied to the embedding is here.
    embeddings: list[nn.Parameter]
    # The output layer's matrices.
    head: list[nn.Parameter]
    # The matrices between them: attention, MLPs, routers.
    hidden: list[nn.Parameter]
    # Norms, biases and the rest (a convolution's taps, a recurrence's decay rates).
    other: list[nn.Parameter]


class Routing(NamedTuple):
    """A router's decision for N tokens: weights and expert ids (N, top_k); in training also its auxiliary
    loss and the share of assignments each expert received (n_experts,); None in evaluation."""

    weights: torch.Tensor
    experts: torch.Tensor
    aux_loss: torch.Tensor | None
    load: torch.Tensor | None


class RoutingLog:
    """What the routers of one forward pass decided, gathered for the model's output: the sum of their
    auxiliary losses, and each router's expert load by the name of its layer (`0.mlp`, `0.attn`, ...)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.load: dict[str, torch.Tensor] = {}

    def record(self, name: str, decision: Routing) -> None:
        if decision.aux_loss is not None:
            self.losses.append(decision.aux_loss)
            self.load[name] = decision.load

    @property
    def aux_loss(self) -> torch.Tensor | None:
        return torch.stack(self.losses).sum() if self.losses else None


class Sublayer(nn.Module):
    """A part of a block (a sequence mixer, a feed-forward layer, an expert) that declares the roles of its own
    linears for initialisation. Parts nested in it (an MoE's expert MLPs) declare theirs themselves."""

    def residual_outputs(self) -> list[nn.Module]:
        """Its linears whose output is added to the residual stream: init gpt2 scales them by 1/sqrt(2 n_layer)."""
        return []

    def mlp_inputs(self) -> list[nn.Module]:
        """Its MLP input projections: init unit_mlp draws them at std 1/sqrt(their input width)."""
        return []


class SequenceMixer(Sublayer):
    """A block's sublayer that mixes the positions of a sequence: attention, a recurrence.

    Called as `mixer(x, cache, layer, routing)`: x (B, T, dim) at positions `cache.position` on (0 without a
    cache); the mixer keeps what it needs of the past in `cache.state(layer, make)` and records a router's
    decision in `routing` (a RoutingLog).
    """

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs (forward and backward) per token of the work beyond this mixer's nn.Linear weights
        (which the model counts itself) with `context` tokens before it: attention's score and value products."""
        raise NotImplementedError

    def state_numel(self, capacity: int) -> int:
        """Numbers one sequence's decoding state holds in this mixer's cache of `capacity` tokens: keys and values
        for attention, a recurrent state whatever the capacity."""
        raise NotImplementedError


class LanguageModel(nn.Module, ABC):
    """Base of every architecture.

    Implement `forward` and `flops_per_token`; attention models also `new_cache`, sparse models
    `parameter_counts`, models with an output layer `output_head`. `lora_targets` declares the layers LoRA may
    adapt: a target name to the glob patterns of the nn.Linear modules it covers.
    """

    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    @abstractmethod
    def block_size(self) -> int:
        """The most tokens the model reads: its context, and the window the sampler crops to."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def forward(self, idx: torch.Tensor, cache: Cache | None = None) -> ModelOutput:
        """Logits (B, T, vocab_size) for token ids (B, T); with a cache, for the tokens after those it holds."""

    def new_cache(self) -> Cache | None:
        """A cache for incremental decoding, or None for models that recompute their context."""
        return None

    def parameter_counts(self) -> ParameterCounts:
        total = sum(p.numel() for p in self.parameters())
        return ParameterCounts(total, total)

    def output_head(self) -> nn.Module | None:
        """The layer that maps features to logits (its matrices are the `head` group); None where there is none,
        as in the bigram, whose table is an embedding."""
        return None

    def parameter_role(self, module: nn.Module, parameter: nn.Parameter) -> Role:
        """The group of `parameter`, one of `module`'s own: by the module's type and the parameter's shape. An
        architecture with parameters these rules do not place overrides this for them."""
        if isinstance(module, nn.Embedding):
            return "embeddings"
        if parameter.dim() != 2:
            return "other"
        head = self.output_head()
        return "head" if head is not None and any(parameter is p for p in head.parameters()) else "hidden"

    def parameter_groups(self) -> ParameterGroups:
        """Every parameter once, in its group (`parameter_role`); a parameter shared by two modules (a tied head)
        in the group of the first, in the model's order."""
        groups = ParameterGroups([], [], [], [])
        seen = set()
        for module in self.modules():
            for parameter in module.parameters(recurse=False):
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                role = self.parameter_role(module, parameter)
                if role not in ParameterGroups._fields:
                    raise ValueError(f"{type(self).__name__}.parameter_role gave {role!r}, not one of "
                                     f"{', '.join(ParameterGroups._fields)}")
                getattr(groups, role).append(parameter)
        return groups

    @abstractmethod
    def flops_per_token(self, context: int) -> int:
        """Training FLOPs of one token with `context` tokens of context: forward and backward (3x the forward),
        a multiply-add counting 2, over the matrix products the token goes through: the weights it uses (the
        chosen experts only, in sparse models), attention's score and value products over `context` keys,
        and the head. Elementwise work (norms, activations, softmax) and embedding lookups are not counted,
        as PyTorch's FlopCounterMode does not count them."""

    def describe(self) -> list[str]:
        """Lines printed after the trainer's model summary."""
        total, active = self.parameter_counts()
        return [f"parameters: {total:,} total, {active:,} active per token"]
