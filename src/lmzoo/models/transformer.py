"""A decoder-only transformer assembled from the shared blocks: the trunk (embeddings, a stack of pre-norm blocks,
the final norm and the head), whose every layer holds a sequence mixer that `layer_pattern` names and a
feed-forward part that `ffn_pattern` names, each from its registry (lmzoo.models.base.SequenceMixer,
FeedForward) and built from its own settings (`mixers`, `ffns`). GPT-2, a modern GPT, the attention variants, the
recurrent mixers, the mixtures of experts and OpenELM's layer-wise scaling are all this class with different
settings (the presets of conf/model/)."""

import dataclasses
import math

import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.models.base import (FORWARD_AND_BACKWARD, FeedForward, Kind, LanguageModel, ModelConfig, ModelOutput,
                               ParameterCounts, PartSettings, RoutingLog, SequenceMixer, linear_weights, near,
                               require)
from lmzoo.models.blocks import INITS, MLP, NORMS, Attention, Block, Rotary, init_weights, make_dropout, make_norm
from lmzoo.models.cache import Cache
from lmzoo.models.hf_layout import HFLayout
from lmzoo.models.routing import RoutedLayer

POSITIONS = ("learned", "rope")


def default_mixers() -> dict[str, PartSettings]:
    """Every registered mixer's settings at their defaults: the `mixers` a config starts from."""
    return {name: mixer.Settings() for name, mixer in SequenceMixer.registry.items()}


def default_ffns() -> dict[str, PartSettings]:
    """Every registered feed-forward part's settings at their defaults: the `ffns` a config starts from."""
    return {name: ffn.Settings() for name, ffn in FeedForward.registry.items()}


@dataclasses.dataclass(kw_only=True)
class TransformerConfig(ModelConfig):
    """A decoder-only transformer: the trunk's knobs, and each part's own, the sequence mixers' under `mixers` and
    the feed-forward parts' under `ffns`. The defaults make it a modern GPT (the preset gpt_rope); the preset gpt
    (`lmzoo.models.preset_config("gpt", ...)`) is GPT-2's architecture."""

    block_size: int
    n_layer: int = 4
    # The heads of the mixers that have them (attention, Gated DeltaNet): heads of n_embd / n_head channels.
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    positions: str = "rope"
    norm: str = "rmsnorm"
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    # Weight init, one of blocks.INITS: "gpt2" scales the residual projections by 1/sqrt(2 n_layer), "plain" does not.
    init: str = "gpt2"
    # The embedding table and head are padded to a multiple of this for fast matmuls.
    pad_vocab_to: int = 64
    # The sequence mixer of each layer by its registered name, cycled over n_layer (layer i: layer_pattern[i % len]).
    layer_pattern: list[str] = dataclasses.field(default_factory=lambda: [Attention.name])
    # Each mixer's settings by its name (model.mixers.NAME.KNOB; its Settings class has the knobs and defaults). Only
    # the mixers layer_pattern names may differ from their defaults, and only theirs are kept.
    mixers: dict = dataclasses.field(default_factory=default_mixers)
    # The feed-forward part after each layer's mixer by its registered name, cycled as layer_pattern is; empty: none
    # (the mixer alone, as Mamba-2's blocks).
    ffn_pattern: list[str] = dataclasses.field(default_factory=lambda: [MLP.name])
    # Each feed-forward part's settings by its name (model.ffns.NAME.KNOB), as `mixers`.
    ffns: dict = dataclasses.field(default_factory=default_ffns)

    def __post_init__(self):
        super().__post_init__()
        require(self.block_size >= 1, "block_size must be a positive integer", self.block_size)
        require(self.n_layer >= 1, "n_layer must be a positive integer", self.n_layer)
        require(self.n_head >= 1, "n_head must be a positive integer", self.n_head)
        require(0 <= self.dropout < 1, "dropout must lie in [0, 1)", self.dropout)
        require(self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}", self.positions)
        require(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}", self.norm)
        require(self.init in INITS, f"init must be one of {', '.join(INITS)}", self.init)
        require(self.rope_base > 0, "rope_base must be positive", self.rope_base)
        require(self.pad_vocab_to >= 1, "pad_vocab_to must be a positive integer", self.pad_vocab_to)
        mixers = SequenceMixer.registry
        require(len(self.layer_pattern) >= 1 and all(name in mixers for name in self.layer_pattern),
                f"layer_pattern must list layers of {', '.join(mixers)}", self.layer_pattern)
        ffns = FeedForward.registry
        require(all(name in ffns for name in self.ffn_pattern),
                f"ffn_pattern must list feed-forward parts of {', '.join(ffns)}, or none", self.ffn_pattern)
        # Heads split the width only for the layers that have them (n_head is a mixer's knob of the trunk).
        require(self.n_embd >= 1 and (self.n_embd % self.n_head == 0 or "n_head" not in self.knobs_read()),
                f"n_embd must be a positive multiple of n_head ({self.n_head})", self.n_embd)
        self.mixers = chosen_settings(mixers, self.mixers, self.layer_pattern, "mixers", "layer_pattern")
        self.ffns = chosen_settings(ffns, self.ffns, self.ffn_pattern, "ffns", "ffn_pattern")
        for group in ("mixers", "ffns"):
            for name, settings in getattr(self, group).items():
                settings.check(self, f"{group}.{name}")
        for pattern_key in ("layer_pattern", "ffn_pattern"):
            self.check_every_part_built(pattern_key)

    # The trunk's knobs that only its mixers read (SequenceMixer.trunk_knobs).
    MIXERS_KNOBS = ("n_head", "rope_base")

    def knobs_read(self) -> set[str]:
        """The MIXERS_KNOBS that a layer of this model reads: rope_base only with positions rope."""
        built = set(self.layer_pattern[: self.n_layer])
        read = {knob for name in built for knob in SequenceMixer.registry[name].trunk_knobs}
        return read if self.positions == "rope" else read - {"rope_base"}

    def check_new(self, typed: frozenset[str]) -> None:
        for group in ("mixers", "ffns"):
            for name, settings in getattr(self, group).items():
                settings.check_new(self, f"{group}.{name}")
        unread = [knob for knob in self.MIXERS_KNOBS if f"model.{knob}" in typed and knob not in self.knobs_read()]
        if unread == ["rope_base"] and self.positions != "rope":
            raise UserError(f"model.rope_base sets RoPE, which model.positions={self.positions} does not use: leave "
                            "it out, or set model.positions=rope")
        if unread:
            built = ", ".join(sorted(set(self.layer_pattern[: self.n_layer])))
            raise UserError(f"model.{unread[0]} is read by none of this model's layers ({built}): leave it out, or "
                            "set their own knobs, model.mixers.NAME.*")

    def check_every_part_built(self, pattern_key: str) -> None:
        """Refuse a pattern longer than the model is deep where a part it names is in none of the layers built."""
        pattern = getattr(self, pattern_key)
        built = pattern[: self.n_layer]
        missing = [name for name in pattern if name not in built]
        if missing:
            raise UserError(f"model.n_layer={self.n_layer} builds the first {self.n_layer} of model.{pattern_key} "
                            f"[{', '.join(pattern)}] and no {missing[0]} layer; set model.n_layer to {len(pattern)} "
                            f"or more, or a model.{pattern_key} without {missing[0]}")

    def mixer(self, layer: int) -> str:
        """The name of layer `layer`'s sequence mixer."""
        return self.layer_pattern[layer % len(self.layer_pattern)]

    def ffn(self, layer: int) -> str | None:
        """The name of layer `layer`'s feed-forward part; None without one."""
        return self.ffn_pattern[layer % len(self.ffn_pattern)] if self.ffn_pattern else None

    width_field = "n_embd"
    choices = ("positions", "norm", "layer_pattern", "ffn_pattern")

    def choice_values(self) -> dict:
        """The trunk's choices and those of its parts' settings (`mixers.NAME.KNOB`, `ffns.NAME.KNOB`)."""
        values = super().choice_values()
        for group in ("mixers", "ffns"):
            for name, settings in getattr(self, group).items():
                values |= {f"{group}.{name}.{knob}": getattr(settings, knob) for knob in settings.choices}
        return values

    def with_width(self, width: int) -> "TransformerConfig | None":
        """At `width`, the head count that keeps head_dim nearest to this config's (whole heads of an even size,
        which RoPE rotates in halves, within a factor 2 of it) among those its mixers accept (n_head as it is where
        no layer reads it), and each mixer's sizes at that width (PartSettings.at_width)."""
        heads = [self.n_head]
        if "n_head" in self.knobs_read():
            heads = sorted((h for h in range(1, width // 2 + 1) if width % (2 * h) == 0
                            and near(width // h, self.head_dim)), key=lambda h: abs(width / h - self.head_dim))
        mixers = {name: settings.at_width(width) for name, settings in self.mixers.items()}
        ffns = {name: settings.at_width(width) for name, settings in self.ffns.items()}
        if None in mixers.values() or None in ffns.values():
            return None
        for n_head in heads:
            try:
                return dataclasses.replace(self, n_embd=width, n_head=n_head, mixers=mixers, ffns=ffns)
            except UserError:
                continue
        return None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def build(self) -> "Transformer":
        return Transformer(self)


def chosen_settings(registry: dict, given: dict, pattern: list[str], key: str, pattern_key: str) -> dict:
    """The settings of each part `pattern` names, in its order: `given`'s (settings, or dicts of knobs, by part
    name) over the part's defaults. A knob set for a part the pattern does not name is refused in one line."""
    unknown = [name for name in given if name not in registry]
    if unknown:
        raise UserError(f"model.{key}.{unknown[0]} is not one of {', '.join(registry)}; set the knobs of those")
    chosen = {}
    for name, values in given.items():
        settings_class = registry[name].Settings
        settings = values if isinstance(values, PartSettings) else part_settings(settings_class, values,
                                                                                 f"{key}.{name}")
        if name in pattern:
            chosen[name] = settings
            continue
        default = settings_class()
        changed = next((field.name for field in dataclasses.fields(settings)
                        if getattr(settings, field.name) != getattr(default, field.name)), None)
        if changed is not None:
            named = ", ".join(dict.fromkeys(pattern))
            raise UserError(f"model.{key}.{name}.{changed} sets {name} layers, and model.{pattern_key} [{named}] has "
                            f"none; add {name} to model.{pattern_key}, or leave model.{key}.{name} out")
    return {name: chosen.get(name) or registry[name].Settings() for name in dict.fromkeys(pattern)}


def part_settings(settings_class: type[PartSettings], values, key: str) -> PartSettings:
    """`settings_class` from a dict of knobs, an unknown knob refused in one line."""
    if not isinstance(values, dict):
        raise UserError(f"model.{key} must be a mapping of knobs, got {values!r}")
    knobs = [field.name for field in dataclasses.fields(settings_class) if field.init]
    unknown = [knob for knob in values if knob not in knobs]
    if unknown:
        raise UserError(f"model.{key} has no knob {unknown[0]}; its knobs are {', '.join(knobs) or 'none'}")
    return settings_class(**values)


def padded(vocab_size: int, multiple: int) -> int:
    return -(-vocab_size // multiple) * multiple


class Transformer(LanguageModel):
    """Token embedding (+ learned positions or RoPE), a stack of pre-norm blocks, a final norm and the LM head.

    The padded logits past the true vocabulary are cut off, so they never reach the loss or the sampler.
    """

    config: TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        rotaries = {}

        def rotary(head_dim: int) -> Rotary | None:
            """One RoPE table per head size, shared by the layers."""
            if c.positions != "rope":
                return None
            if head_dim not in rotaries:
                rotaries[head_dim] = Rotary(head_dim, c.block_size, c.rope_base)
            return rotaries[head_dim]

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
        # A block adds its mixer's output to the residual stream, and its feed-forward part's where it has one.
        init_weights(self, sum(1 + (block.mlp is not None) for block in self.transformer.h), c.init)

    def attention(self, layer: int, rotary) -> nn.Module:
        """Layer `layer`'s sequence mixer, as the config's layer_pattern names it; `rotary(head_dim)` gives the RoPE of
        heads of that size."""
        name = self.config.mixer(layer)
        return SequenceMixer.registry[name].build(self.config, self.config.mixers[name], layer, rotary)

    def block(self, layer: int, rotary) -> Block:
        """Layer `layer`: its mixer, its feed-forward layer and their norms (the second only with a feed-forward)."""
        c = self.config
        mixer, feed_forward = self.attention(layer, rotary), self.feed_forward(layer)
        return Block(mixer, feed_forward, make_norm(c.norm, c.n_embd, c.bias),
                     make_norm(c.norm, c.n_embd, c.bias) if feed_forward is not None else None)

    def feed_forward(self, layer: int) -> nn.Module | None:
        """Layer `layer`'s feed-forward part, as the config's ffn_pattern names it, unless a subclass varies it; None
        without one (Mamba-2's blocks are the mixer alone)."""
        name = self.config.ffn(layer)
        return None if name is None else FeedForward.registry[name].build(self.config, self.config.ffns[name], layer)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def lora_targets(self) -> dict[str, tuple[str, ...]]:
        """What each layer's parts declare LoRA may adapt (Part.lora_targets), under their names in the model."""
        targets = {}
        for layer, block in enumerate(self.transformer.h):
            for name, part in (("attn", block.attn), ("mlp", block.mlp)):
                for target, patterns in getattr(part, "lora_targets", {}).items():
                    targets.setdefault(target, []).extend(f"transformer.h.{layer}.{name}.{p}" for p in patterns)
        return {target: tuple(patterns) for target, patterns in targets.items()}

    def forward(self, idx: torch.Tensor, cache: Cache | None = None, only_at: torch.Tensor | None = None
                ) -> ModelOutput:
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
        if only_at is not None:
            x = x[only_at]
        logits = self.lm_head(self.transformer.ln_f(x))[..., : self.vocab_size]
        return ModelOutput(logits, routing.aux_loss, routing.load)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the forward in place; routed layers keep their token dispatch eager."""
        for module in self.modules():
            if isinstance(module, RoutedLayer):
                module.keep_dispatch_eager()
        super().compile(*args, **kwargs)

    def mixers(self) -> list[SequenceMixer]:
        """Each layer's sequence mixer, in order."""
        return [block.attn for block in self.transformer.h]

    def new_cache(self) -> Cache:
        """A cache of block_size tokens; unbounded when no layer's state grows with every token (Kind.GROWING) and
        positions are RoPE's, which are relative: a local layer keeps only its window, a recurrent one its state,
        and a query reads alike at any position."""
        c = self.config
        unbounded = all(mixer.kind is not Kind.GROWING for mixer in self.mixers()) and c.positions == "rope"
        return Cache(c.n_layer, None if unbounded else self.block_size)

    def output_head(self) -> nn.Module:
        return self.lm_head

    def hf_layout(self) -> HFLayout | None:
        """The Hugging Face layout every layer's mixer declares (SequenceMixer.hf), when they all declare the same
        one; None otherwise (a hybrid, a mixer without one)."""
        layouts = [mixer.hf for mixer in self.mixers()]
        return layouts[0] if all(layout is layouts[0] for layout in layouts) else None

    def flops_per_token(self, context: int) -> int:
        routed = [m for m in self.modules() if isinstance(m, RoutedLayer)]
        weights = linear_weights(self) - sum(m.inactive_linear_weights() for m in routed)
        mixing = sum(m.mixing_flops(context) for m in self.modules() if isinstance(m, SequenceMixer))
        return FORWARD_AND_BACKWARD * 2 * weights + mixing

    def cache_values(self, context: int) -> int:
        """The values the KV cache holds for a sequence of `context` tokens: the attending layers' (a local one's at
        most its window's)."""
        return sum(mixer.state_numel(context) for mixer in self.mixers() if mixer.kind is not Kind.FLAT)

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the decoding cache of `batch` sequences at block_size tokens in the weights' dtype: keys and
        values of the attention layers, the recurrent layers' state (the same at any length)."""
        numbers = sum(mixer.state_numel(self.config.block_size) for mixer in self.mixers())
        return batch * numbers * self.transformer.wte.weight.element_size()

    def describe(self) -> list[str]:
        c = self.config
        lines = super().describe() + layer_lines([layer_description(c.mixer(layer), c.ffn(layer), block)
                                                  for layer, block in enumerate(self.transformer.h)],
                                                 math.lcm(len(c.layer_pattern), len(c.ffn_pattern) or 1))
        kinds = {mixer.kind for mixer in self.mixers()}
        if Kind.FLAT in kinds:
            grows = ", the same at any length" if self.new_cache().capacity is None else ""
            lines.append(f"decoding state per sequence: {self.state_bytes():,} bytes at {c.block_size} tokens{grows}")
        if kinds - {Kind.FLAT}:
            per_token = 4 * self.cache_values(c.block_size) / c.block_size
            # Against multi-head attention in the same layers (a hybrid's recurrent layers cache no keys).
            attending = sum(mixer.kind is not Kind.FLAT for mixer in self.mixers())
            lines.append(f"KV cache at block_size {c.block_size} in fp32: {per_token:,.0f} B per token (multi-head "
                         f"attention of {'this 1 head' if c.n_head == 1 else f'these {c.n_head} heads'}: "
                         f"{4 * 2 * attending * c.n_embd:,} B)")
        return lines

    def parameter_counts(self) -> ParameterCounts:
        total, _ = super().parameter_counts()
        inactive = sum(m.inactive_parameters() for m in self.modules() if isinstance(m, RoutedLayer))
        return ParameterCounts(total, total - inactive)


def layer_description(mixer: str, ffn: str | None, block: Block) -> str:
    """A layer in a few words: its mixer's name and sizes, then its feed-forward part's."""
    described = [(name, part.describe()) for name, part in ((mixer, block.attn), (ffn, block.mlp)) if part is not None]
    return " + ".join(f"{name} ({details})" if details else name for name, details in described) + (
        "" if ffn else " alone")


def layer_lines(described: list[str], period: int) -> list[str]:
    """The layers' descriptions: the pattern once (its runs of alike layers counted) when the layers repeat it,
    else each layer's."""
    if len(set(described)) == 1:
        return [f"layers: {len(described)} x {described[0]}"]
    if not all(line == described[layer % period] for layer, line in enumerate(described)):
        return [f"layer {layer}: {line}" for layer, line in enumerate(described)]
    runs = [[described[0], 1]]
    for line in described[1:period]:
        if line == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([line, 1])
    pattern = "; ".join(f"{count} x {line}" for line, count in runs)
    return [f"layers: {pattern}" if len(described) == period else f"layers: {pattern}; cycled over {len(described)}"]
