"""The zoo, as plain PyTorch: each architecture is an nn.Module built from its config dataclass.

Importing the package imports every module in it (`discover`), so that each registers the block parts it defines
(lmzoo.models.base.Part: the sequence mixers `model.layer_pattern` names, the feed-forward parts `model.ffn_pattern`
names): a new file here is found with no other edit.

The zoo's architectures are three classes: the bigram table, the MLP over a fixed context, and the transformer, whose
presets (conf/model/) choose its layers' parts by name.
"""

import importlib
import pkgutil

from lmzoo.models.base import LanguageModel, ModelConfig, ModelOutput, ParameterCounts
from lmzoo.models.bigram import Bigram, BigramConfig
from lmzoo.models.cache import Cache
from lmzoo.models.mlp import MLPConfig, MLPLanguageModel
from lmzoo.models.presets import preset_config
from lmzoo.models.transformer import Transformer, TransformerConfig


def discover() -> None:
    """Import each module of this package (on its __path__) not imported yet."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


discover()

__all__ = [
    "preset_config", "LanguageModel", "ModelConfig", "ModelOutput", "ParameterCounts", "Cache",
    "Bigram", "BigramConfig", "MLPLanguageModel", "MLPConfig", "Transformer", "TransformerConfig",
]
