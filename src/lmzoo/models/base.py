"""The contract between a model and everything that uses it: the trainer, the sampler, checkpoints and LoRA.

A model is a plain `torch.nn.Module` built from a config dataclass (`config.build()`). It maps token ids
(B, T) to a `ModelOutput`, whose logits cover the true vocabulary. Attention models read up to
`block_size` tokens and sample with a `Cache` from `new_cache` (each layer keeps its own state in it); fixed-context models (bigram: 1 token,
MLP: `context` tokens) predict every position of a longer window from its own few predecessors.
"""

import dataclasses
import enum
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal, NamedTuple

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

    def check_new(self, typed: frozenset[str]) -> None:
        """Refuse, in a config composed for a new run, what `__post_init__` lets through for the checkpoints that
        hold it (sizes an earlier release's presets gave), and a knob typed on the command line (`typed`: the keys
        set, model.KNOB among them) that the model built would not read. Subclasses that have such refuse them."""

    def build(self) -> "LanguageModel":
        raise NotImplementedError

    def as_dict(self) -> dict:
        """The arguments that rebuild this config (derived fields left out), settings of parts as dicts."""
        return {field.name: plain(getattr(self, field.name)) for field in dataclasses.fields(self) if field.init}

    def choice_values(self) -> dict:
        """The settings that make the architecture what it is (`choices`), by their keys under `model.`."""
        return {key: getattr(self, key) for key in self.choices}


def plain(value):
    """A config value as a checkpoint records it: settings dataclasses (and dicts of them) as dicts."""
    if dataclasses.is_dataclass(value):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value) if field.init}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


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


def near(size: int, preset: int) -> bool:
    """Whether a sized model's head size stays within a factor 2 of the preset's."""
    return preset / 2 <= size <= 2 * preset


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

    def reference_init(self, residual_scale: float) -> None:
        """Initialise what this part's reference initialises otherwise than the model's shared init does (normal(0,
        0.02), its residual outputs scaled by `residual_scale`, which has run); most parts keep the shared init."""

    def describe(self) -> str:
        """Its sizes and options in a few words, for the model summary."""
        return ""


class Kind(enum.Enum):
    """What a sequence mixer keeps of the past to decode the next token: it decides the cache's capacity and what
    describe reports."""

    # Attends to every past token: keys and values of up to the context, a state that grows with each token.
    GROWING = "attends with a growing cache"
    # Attends over a window: the last `window` tokens' keys and values at most.
    WINDOW = "attends over a window"
    # Recurs: a state of one size however many tokens it has read.
    FLAT = "recurs with a flat state"


@dataclasses.dataclass(kw_only=True)
class PartSettings:
    """The knobs of a block part chosen by name (a sequence mixer of `model.layer_pattern`, a feed-forward layer of
    `model.ffn_pattern`), with their defaults; a config holds them as `model.mixers.NAME` (`model.ffns.NAME`).
    Subclasses declare their knobs as fields and refuse a bad value in `check`, one line each."""

    # The knobs that make the architecture what it is (lmzoo.models.presets.preset_of), as ModelConfig.choices.
    choices: ClassVar[tuple[str, ...]] = ()
    # The flat keys of lmzoo 0.2's model config that this part's knobs replace ({old key: knob}), by which
    # lmzoo.checkpoints.record upgrades a checkpoint and a command line that still types them is told the new key.
    former: ClassVar[dict[str, str]] = {}

    def check(self, trunk, key: str) -> None:
        """Refuse a value in one line naming `model.KEY.KNOB`; `trunk` is the config of the model that holds these
        settings (its n_embd, n_head, block_size, ...). Subclasses add their checks after this one."""
        check_field_types(self, f"model.{key}")

    def check_new(self, trunk, key: str) -> None:
        """Refuse, in a config composed for a new run, a value `check` accepts from a checkpoint (sizes an earlier
        release's presets gave): ModelConfig.check_new."""

    @classmethod
    def upgraded(cls, knobs: dict) -> dict:
        """The knobs of a part of an lmzoo 0.2 model (from `former`), with those this release added that the model
        had otherwise than their defaults say."""
        return knobs

    def require_counts(self, key: str, *knobs: str) -> None:
        """Refuse any of `knobs` (counts: sizes, kernel taps) that is not a positive integer."""
        for knob in knobs:
            require(getattr(self, knob) >= 1, f"{key}.{knob} must be a positive integer", getattr(self, knob))

    def at_width(self, width: int) -> "PartSettings | None":
        """These settings in a model of width `width` (TransformerConfig.with_width): sizes that follow the width
        move with it; None where none fits."""
        return self


class Part(Sublayer):
    """A block part chosen by name: a subclass that passes `name=` in its class statement is registered under it
    in its family's `registry` (a sequence mixer's, a feed-forward layer's) when its module is imported, which
    `lmzoo.models` does for every module of the package. It declares its settings class and LoRA targets and
    builds itself from them."""

    registry: ClassVar[dict[str, type["Part"]]]
    name: ClassVar[str]
    Settings: ClassVar[type[PartSettings]] = PartSettings
    # The nn.Linear modules LoRA may adapt: a target name (qkv, proj, mlp) to glob patterns of their names
    # within this part; a model gathers those of its parts (LanguageModel.lora_targets).
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {}
    # lmzoo 0.2's config classes whose models held this part in every layer (lmzoo.models.moe.MoEConfig): their
    # checkpoints are upgraded to a TransformerConfig whose pattern names it.
    replaces: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        other = cls.registry.get(name)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} and {other.__module__}.{other.__qualname__} are "
                            f"both registered as {name!r}: rename one")
        cls.name = name
        cls.registry[name] = cls


class FeedForward(Part):
    """A block's feed-forward part, called as `ffn(x, routing)` on x (B, T, dim): a dense MLP, a sparse mixture of
    experts. A registered one (`class NAME(FeedForward, name="NAME")`) is what `model.ffn_pattern` names, with its
    knobs under model.ffns.NAME."""

    registry: ClassVar[dict[str, type["FeedForward"]]] = {}

    @classmethod
    def build(cls, trunk, settings: PartSettings, layer: int) -> "FeedForward":
        """The feed-forward part of layer `layer` (from 0) in a model of config `trunk` (its n_embd, bias,
        dropout), with these settings."""
        raise NotImplementedError


class SequenceMixer(Part):
    """A block's part that mixes the positions of a sequence: attention, a recurrence.

    Called as `mixer(x, cache, layer, routing)`: x (B, T, dim) at positions `cache.position` on (0 without a
    cache); the mixer keeps what it needs of the past in `cache.state(layer, make)` and records a router's
    decision in `routing` (a RoutingLog). A registered mixer (`class NAME(SequenceMixer, name="NAME")`) is what
    `model.layer_pattern` names; its file declares beside it its `Settings`, `kind`, `lora_targets`, its FLOPs
    (`mixing_flops`), its decoding state (`state_numel`), its Hugging Face layout (`hf`) where one exists, and
    for a recurrence the oracle its chunked form is tested against (`scan`).
    """

    registry: ClassVar[dict[str, type["SequenceMixer"]]] = {}
    kind: Kind = Kind.GROWING
    # How a model whose every layer holds this mixer is written as its transformers class and read back
    # (lmzoo.models.hf_layout.HFLayout); None: it has none, and such models export as lmzoo folders.
    hf: ClassVar["HFLayout | None"] = None
    # For a recurrence: its chunked form, its one-token step, random inputs of theirs and which of them it multiplies
    # in their dtype (lmzoo.models.recurrent.Scan), by which the tests prove the one equal to the other, and the
    # chunked form in bf16 near its float32 self.
    scan: ClassVar["Scan | None"] = None
    # The trunk's knobs this mixer reads of those only mixers read (TransformerConfig.MIXERS_KNOBS: n_head,
    # rope_base); one typed for a model none of whose mixers reads it is refused rather than ignored.
    trunk_knobs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build(cls, trunk, settings: PartSettings, layer: int,
              rotary: Callable[[int], nn.Module | None]) -> "SequenceMixer":
        """The mixer of layer `layer` (from 0) in a model of config `trunk` (its n_embd, n_head, bias, dropout),
        with these settings; `rotary(head_dim)` is the model's RoPE for heads of that size (None with learned
        positions)."""
        raise NotImplementedError

    def mixing_flops(self, context: int) -> int:
        """Training FLOPs per token (forward and backward) of the work beyond this mixer's nn.Linear weights
        (which the model counts itself) with `context` tokens before it, as its kernels compute it: attention's
        score and value products; a recurrence's products, triangular solves and short convolution."""
        raise NotImplementedError

    def state_numel(self, context: int) -> int:
        """Numbers one sequence's decoding state holds after `context` tokens: keys and values for attention (at
        most its window's), a recurrent state whatever the length."""
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
    def forward(self, idx: torch.Tensor, cache: Cache | None = None, only_at: torch.Tensor | None = None
                ) -> ModelOutput:
        """Logits (B, T, vocab_size) for token ids (B, T); with a cache, for the tokens after those it holds. With
        `only_at`, a (B, T) boolean mask, the logits of those positions alone, (N, vocab_size) in the mask's order:
        the part of the model that works position by position (`scored_flops_per_token`) runs there only (a
        synthetic task scores its answers alone; at the recall study's widths the head and the loss over every
        position took up to a third of a step)."""

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
        and the head; a recurrence's triangular solves and short convolutions (SequenceMixer.mixing_flops).
        Elementwise work (norms, activations, softmax) and embedding lookups are not counted, as PyTorch's
        FlopCounterMode does not count them."""

    def scored_flops_per_token(self) -> int:
        """The part of flops_per_token that `forward(only_at=...)` runs at the chosen positions alone: the output
        head's products (all of a model whose logits at a position read nothing computed for another). A run
        that scores a share of its positions is charged that share of it (lmzoo.training.plan)."""
        head = self.output_head()
        return FORWARD_AND_BACKWARD * 2 * head.weight.numel() if head is not None else 0

    def describe(self) -> list[str]:
        """Lines printed after the trainer's model summary."""
        total, active = self.parameter_counts()
        return [f"parameters: {total:,} total, {active:,} active per token"]
