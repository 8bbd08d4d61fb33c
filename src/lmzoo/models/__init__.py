from lmzoo.models.base import LanguageModel
from lmzoo.models.gpt import GPT
from lmzoo.models.gpt_rope import GPTRope

__all__ = ["LanguageModel", "GPT", "GPTRope"]
