"""What lmzoo records about a model in its checkpoints and folders, and how the model is rebuilt from it.

The record names the architecture by its config class (`lmzoo.models.transformer.TransformerConfig`)
and holds the config's fields, so a checkpoint needs no training config to load. Records of lmzoo 0.1,
which named the model class and kept the optimizer settings among the model's, are upgraded on reading.
"""

import importlib

from lmzoo import __version__
from lmzoo.errors import UserError
from lmzoo.models import (BigramConfig, BlockScalingConfig, LanguageModel, MLPConfig, ModelConfig, MoAMoEConfig,
                          MoEConfig, TransformerConfig)

# The releases whose checkpoints this one reads.
READABLE = ("0.1", "0.2")

# lmzoo 0.1's model classes: the config that replaces each, and the choices the class made itself (GPT's
# config kept its own `bias`; the other transformers made this release's default choices). Fixed here, as 0.1 made
# them, whatever the presets become.
LEGACY_ARCHITECTURES = {
    "lmzoo.models.gpt.GPT": (TransformerConfig, dict(positions="learned", norm="layernorm", activation="gelu",
                                                     gated_mlp=False, mlp_ratio=4.0)),
    "lmzoo.models.gpt_rope.GPTRope": (TransformerConfig, {}),
    "lmzoo.models.bigram.Bigram": (BigramConfig, {}),
    "lmzoo.models.mlp.MLPLanguageModel": (MLPConfig, {}),
    "lmzoo.models.block_scaling.BlockScaling": (BlockScalingConfig, {}),
    "lmzoo.models.moe.MoEGPT": (MoEConfig, {}),
    "lmzoo.models.moa_moe.MoAMoE": (MoAMoEConfig, {}),
}


def architecture_record(model: LanguageModel) -> dict:
    config = type(model.config)
    return {"architecture": f"{config.__module__}.{config.__qualname__}", "config": model.config.as_dict()}


def build_config(record: dict) -> ModelConfig:
    """The recorded architecture's config."""
    module_name, class_name = record["architecture"].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**record["config"])


def build_model(record: dict) -> LanguageModel:
    """A freshly initialised model of the recorded architecture and config."""
    return build_config(record).build()


def release(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_readable(version: str, source) -> None:
    if release(version) not in READABLE:
        raise UserError(f"{source} was written by lmzoo {version}, which this lmzoo {__version__} cannot read; "
                        f"use lmzoo {version} (pip install lmzoo=={version}) or retrain")


def upgrade_record(record: dict) -> dict:
    """The record in this release's layout; a 0.1 record (which names a `target` class) is translated, a
    current one returned as it is."""
    if "target" not in record:
        return record
    config_class, choices = LEGACY_ARCHITECTURES[record["target"]]
    old = dict(record["config"])
    optim = old.pop("optim", None) or {}
    if config_class in (BigramConfig, MLPConfig):
        old.pop("block_size", None)
    config: ModelConfig = config_class(**old, **choices)
    upgraded = {key: value for key, value in record.items() if key not in ("target", "config")}
    return {**upgraded, "architecture": f"{config_class.__module__}.{config_class.__qualname__}",
            "config": config.as_dict(), "optim": optim}
