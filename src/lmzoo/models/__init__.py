from lmzoo.models.base import LanguageModel
from lmzoo.models.bigram import Bigram
from lmzoo.models.block_scaling import BlockScaling
from lmzoo.models.gpt import GPT
from lmzoo.models.gpt_rope import GPTRope
from lmzoo.models.mlp import MLPLanguageModel
from lmzoo.models.moa_moe import MoAMoE
from lmzoo.models.moe import MoEGPT

__all__ = ["LanguageModel", "Bigram", "BlockScaling", "GPT", "GPTRope", "MLPLanguageModel", "MoAMoE", "MoEGPT"]
