"""What lmzoo records about a model in its checkpoints and folders, and how the model is rebuilt from it.

The record names the architecture by its config class (`lmzoo.models.transformer.TransformerConfig`)
and holds the config's fields, so a checkpoint needs no training config to load. Records of earlier releases are
upgraded on reading: lmzoo 0.1's, which named the model class and kept the optimizer settings among the model's,
and lmzoo 0.2's transformers, which kept every part's knobs among the trunk's and had config classes of their own
for the mixtures of experts and OpenELM's scaling.
"""

import dataclasses
import importlib

from lmzoo import __version__
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel, ModelConfig, TransformerConfig
from lmzoo.models.base import FeedForward, SequenceMixer

# The releases whose checkpoints this one reads.
READABLE = ("0.1", "0.2")

# lmzoo 0.1's model classes: the config class that replaced each in lmzoo 0.2, and the choices the class made
# itself (GPT's config kept its own `bias`; the other transformers made that release's default choices). Fixed
# here, as 0.1 made them, whatever the presets become.
LEGACY_ARCHITECTURES = {
    "lmzoo.models.gpt.GPT": ("lmzoo.models.transformer.TransformerConfig",
                             dict(positions="learned", norm="layernorm", activation="gelu", gated_mlp=False,
                                  mlp_ratio=4.0)),
    "lmzoo.models.gpt_rope.GPTRope": ("lmzoo.models.transformer.TransformerConfig", {}),
    "lmzoo.models.bigram.Bigram": ("lmzoo.models.bigram.BigramConfig", {}),
    "lmzoo.models.mlp.MLPLanguageModel": ("lmzoo.models.mlp.MLPConfig", {}),
    "lmzoo.models.block_scaling.BlockScaling": ("lmzoo.models.block_scaling.BlockScalingConfig", {}),
    "lmzoo.models.moe.MoEGPT": ("lmzoo.models.moe.MoEConfig", {}),
    "lmzoo.models.moa_moe.MoAMoE": ("lmzoo.models.moa_moe.MoAMoEConfig", {}),
}


TRANSFORMER = f"{TransformerConfig.__module__}.{TransformerConfig.__qualname__}"
# lmzoo 0.2's transformer config classes that this release builds as a TransformerConfig whose patterns name the
# parts that replace them (Part.replaces).
FOLDED = ("lmzoo.models.moe.MoEConfig", "lmzoo.models.moa_moe.MoAMoEConfig",
          "lmzoo.models.block_scaling.BlockScalingConfig")


@dataclasses.dataclass(kw_only=True)
class ModelRecord:
    """What lmzoo records about a model, and what the one loader returns with it from any source: a training
    checkpoint keeps it under "lmzoo" (its CHECKPOINT_KEYS; the step is Lightning's own global_step), an exported
    folder as lmzoo.json (FOLDER_KEYS), and GPT-2 from Hugging Face gets one made from its config."""

    # The config class (lmzoo.models.transformer.TransformerConfig) and its fields.
    architecture: str
    config: dict
    tokenizer: dict
    # The lmzoo that wrote it; None for weights from Hugging Face.
    version: str | None = None
    # Training so far; None where the weights do not say (Hugging Face's, or a folder exported from them).
    global_step: int | None = None
    best_val_loss: float | None = None
    wall_time_s: float = 0.0
    optim: dict | None = None
    # How the model derives from a pretrained one ({"method": "lora", ..., "base": SOURCE}); None: it does not.
    finetune: dict | None = None
    # The run's config, lmzoo version and commit (lmzoo.training.provenance).
    run: dict | None = None
    # Every random generator's state (a training checkpoint's, for exact resume).
    rng: dict | None = None
    # The sha256 of an exported folder's model.safetensors.
    weights_sha256: str | None = None
    # Where the weights were loaded from, for any source but a training checkpoint.
    origin: str | None = None
    # The step at which the run's val/loss became NaN or inf, for a checkpoint saved after it; None: it did not.
    diverged_at: int | None = None

    @classmethod
    def of(cls, model: LanguageModel, tokenizer: dict, **values) -> "ModelRecord":
        """The record of `model`, written by this lmzoo."""
        return cls(**architecture_record(model), tokenizer=tokenizer, version=__version__, **values)

    @classmethod
    def read(cls, record: dict, **values) -> "ModelRecord":
        """A record as a checkpoint or lmzoo.json holds it, upgraded to this release's layout; `values` add to it
        (or replace what it holds). Keys this release does not know are left out."""
        stored = upgrade_record(record)
        known = {field.name: stored[field.name] for field in dataclasses.fields(cls) if field.name in stored}
        return cls(**{**known, **values})

    def stored(self, keys: tuple[str, ...]) -> dict:
        """The record as a checkpoint (CHECKPOINT_KEYS) or lmzoo.json (FOLDER_KEYS) keeps it."""
        return {key: getattr(self, key) for key in keys}

    def build_config(self) -> ModelConfig:
        """The recorded architecture's config; one this release does not have is a UserError."""
        config_class = config_class_of(self.architecture)
        try:
            return config_class(**self.config)
        except TypeError as error:
            raise UserError(f"the checkpoint's {config_class.__name__} settings do not fit lmzoo {__version__} "
                            f"({error}); load it with the lmzoo that wrote it") from None

    def build_model(self) -> LanguageModel:
        """A freshly initialised model of the recorded architecture and config."""
        return self.build_config().build()


CHECKPOINT_KEYS = ("version", "architecture", "config", "optim", "tokenizer", "best_val_loss", "wall_time_s", "rng",
                   "finetune", "run", "diverged_at")
FOLDER_KEYS = ("version", "architecture", "config", "tokenizer", "global_step", "best_val_loss", "weights_sha256")


def architecture_record(model: LanguageModel) -> dict:
    config = type(model.config)
    return {"architecture": f"{config.__module__}.{config.__qualname__}", "config": model.config.as_dict()}


def release(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_readable(version: str, source) -> None:
    if release(version) not in READABLE:
        raise UserError(f"{source} was written by lmzoo {version}, which this lmzoo {__version__} cannot read; "
                        f"use lmzoo {version} (pip install lmzoo=={version}) or retrain")


def config_class_of(architecture: str) -> type[ModelConfig]:
    """The config class a record names; one this release does not have is a UserError."""
    module_name, _, class_name = str(architecture).rpartition(".")
    config_class = None
    if module_name.startswith("lmzoo.models"):
        try:
            config_class = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            pass
    if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
        raise UserError(f"the checkpoint's architecture {architecture!r} is not one of lmzoo {__version__}; "
                        "load it with the lmzoo that wrote it")
    return config_class


def upgrade_record(record: dict) -> dict:
    """The record in this release's layout: a 0.1 record (which names a `target` class) and a 0.2 transformer's
    (whose config has no `mixers`) translated, a current one returned as it is."""
    legacy = "target" in record
    if legacy:
        record = legacy_record(record)
    architecture, config = record["architecture"], record["config"]
    if architecture in FOLDED or (architecture == TRANSFORMER and "mixers" not in config):
        return {**record, "architecture": TRANSFORMER, "config": TransformerConfig(**with_parts(architecture,
                                                                                                 config)).as_dict()}
    return {**record, "config": config_class_of(architecture)(**config).as_dict()} if legacy else record


def legacy_record(record: dict) -> dict:
    """A 0.1 record in lmzoo 0.2's layout: the config class for the model class, the optimizer's settings apart."""
    architecture, choices = LEGACY_ARCHITECTURES[record["target"]]
    config = dict(record["config"])
    optim = config.pop("optim", None) or {}
    if architecture not in FOLDED and architecture != TRANSFORMER:
        config.pop("block_size", None)
    upgraded = {key: value for key, value in record.items() if key not in ("target", "config")}
    return {**upgraded, "architecture": architecture, "config": {**config, **choices}, "optim": optim}


def with_parts(architecture: str, config: dict) -> dict:
    """A 0.2 transformer's config, whose parts' knobs lay among the trunk's (window, qk_norm, ssm_state, mlp_ratio,
    n_experts, ...), as this release's: its patterns (a folded class's parts, those that replace it; no feed-forward
    part at mlp_ratio 0), each part's knobs under model.mixers.NAME or model.ffns.NAME (the keys its settings declare
    as `former`), and the heads a head_dim gave. A knob of a part the model does not hold did nothing, and is
    dropped, as is a part its pattern names past n_layer."""
    fields = {field.name: field for field in dataclasses.fields(TransformerConfig)}
    patterns = {}
    for key, registry in (("layer_pattern", SequenceMixer.registry), ("ffn_pattern", FeedForward.registry)):
        replacing = [name for name, part in registry.items() if architecture in part.replaces]
        # Cut to the layers built: 0.2 accepted a pattern longer than n_layer, whose parts past it were no layer's.
        n_layer = config.get("n_layer", fields["n_layer"].default)
        patterns[key] = (replacing or config.get(key) or fields[key].default_factory())[:n_layer]
    if config.get("mlp_ratio") == 0:
        patterns["ffn_pattern"] = []
    trunk = {key: value for key, value in config.items() if key in fields and key not in ("mixers", "ffns")}
    if "n_head" not in config and "head_dim" in config:
        trunk["n_head"] = config["n_embd"] // config["head_dim"]

    def settings(registry: dict, pattern: list[str]) -> dict:
        return {name: registry[name].Settings.upgraded({knob: config[old] for old, knob in
                                                        registry[name].Settings.former.items() if old in config})
                for name in dict.fromkeys(pattern)}

    return {**trunk, **patterns, "mixers": settings(SequenceMixer.registry, patterns["layer_pattern"]),
            "ffns": settings(FeedForward.registry, patterns["ffn_pattern"])}
