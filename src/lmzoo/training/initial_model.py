"""The model a run starts from: built from its config (sized to model.target_params, checked to fit in memory),
or from pretrained weights (init_from), in full or through a finetune recipe."""

import sys

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmzoo.errors import UserError
from lmzoo.memory import check_fits_in_memory
from lmzoo.models import LanguageModel
from lmzoo.models.base import sized
from lmzoo.training.finetune import from_pretrained


def initial_model(cfg: DictConfig, vocab_size: int, tokenizer: dict) -> tuple[LanguageModel, dict | None]:
    """The model of cfg.model for the data's vocabulary and tokenizer, from init_from's weights when given; and
    the finetune recipe's record (lmzoo.training.finetune.from_pretrained), or None."""
    config = instantiate(cfg.model, vocab_size=vocab_size, _convert_="all")
    if cfg.init_from:
        recipe = instantiate(cfg.finetune, _convert_="all") if cfg.finetune else None
        return from_pretrained(cfg.init_from, config, tokenizer, cfg.block_size, recipe)
    if cfg.finetune:
        raise UserError("a finetune recipe needs pretrained weights; pass init_from=PATH or init_from=hf:NAME")
    return build_model(config), None


def build_model(config):
    """The model of `config`, sized to model.target_params when given (saying to what)."""
    resized = sized(config)
    check_model_fits_in_memory(resized)
    model = resized.build()
    if resized is not config:
        widths = " ".join(f"model.{key}={value}" for key, value in resized.as_dict().items()
                          if value != getattr(config, key))
        print(f"model.target_params={config.target_params:g}: {widths}, {model.parameter_counts().active:,} "
              "active parameters", file=sys.stderr)
    return model


def check_model_fits_in_memory(config) -> None:
    """Refuse a model whose float32 weights alone exceed the machine's memory, before allocating them."""
    with torch.device("meta"):
        total = config.build().parameter_counts().total
    check_fits_in_memory(4 * total, torch.device("cpu"), f"the model has {total:,} parameters, {4 * total / 1e9:,.0f} "
                         "GB of float32 weights", "lower model.target_params or the model's width and depth")
