"""The zoo, as plain PyTorch: each architecture is an nn.Module built from its config dataclass."""

from lmzoo.models.base import LanguageModel, ModelConfig, ModelOutput, ParameterCounts
from lmzoo.models.bigram import Bigram, BigramConfig
from lmzoo.models.block_scaling import BlockScaling, BlockScalingConfig
from lmzoo.models.cache import Cache
from lmzoo.models.mlp import MLPConfig, MLPLanguageModel
from lmzoo.models.moa_moe import MoAMoE, MoAMoEConfig
from lmzoo.models.moe import MoEConfig, MoETransformer
from lmzoo.models.presets import preset_config
from lmzoo.models.transformer import Transformer, TransformerConfig

__all__ = [
    "preset_config", "LanguageModel", "ModelConfig", "ModelOutput", "ParameterCounts", "Cache",
    "Bigram", "BigramConfig", "MLPLanguageModel", "MLPConfig", "Transformer", "TransformerConfig",
    "BlockScaling", "BlockScalingConfig", "MoETransformer", "MoEConfig", "MoAMoE", "MoAMoEConfig",
]
