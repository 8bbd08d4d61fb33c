"""Start training from pretrained weights (`init_from`), in full or through adapters (`finetune=lora`)."""

from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from lmzoo.checkpoints.load import build_from
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel, ModelConfig
from lmzoo.models.lora import merge
from lmzoo.models.presets import preset_of


def from_pretrained(cfg: DictConfig, tokenizer_spec: dict) -> tuple[LanguageModel, dict | None]:
    """The pretrained model of `init_from`, with the run's dropout; with a finetune recipe, only its adapters
    train. Also returns the recipe's record, naming the base, or None."""
    source = cfg.init_from
    pretrained, info = build_from(source)
    merge(pretrained)
    wanted = get_class(cfg.model._target_)
    # init_from takes every setting but the architecture's choices (the shape) from the weights.
    asked = {key: cfg.model[key] for key in wanted.choices}
    has = {key: getattr(pretrained.config, key, None) for key in asked}
    if type(pretrained.config) is not wanted or asked != has:
        raise UserError(f"init_from={source} holds another architecture than model= builds; "
                        f"pass model={model_option(pretrained.config)}")
    if info["tokenizer"] != tokenizer_spec:
        raise UserError(f"init_from={source} uses the {describe_tokenizer(info['tokenizer'])} but the data uses the "
                        f"{describe_tokenizer(tokenizer_spec)}; pick data tokenized the same way "
                        "(data=shakespeare for GPT-2)")
    if cfg.block_size > pretrained.block_size:
        raise UserError(f"block_size={cfg.block_size} exceeds the context of init_from={source}; "
                        f"pass block_size={pretrained.block_size} or less")
    settings = pretrained.config.as_dict()
    if "dropout" in settings and "dropout" in cfg.model:
        settings["dropout"] = cfg.model.dropout
    model = type(pretrained.config)(**settings).build()
    model.load_state_dict(pretrained.state_dict())
    if not cfg.finetune:
        return model, None
    recipe = instantiate(cfg.finetune, _convert_="all")
    recipe.apply(model)
    base = source if source.startswith("hf:") else str(Path(source).expanduser().resolve())
    return model, {**recipe.spec, "base": base}


def model_option(config: ModelConfig) -> str:
    """The model= option that builds an architecture with these choices."""
    return preset_of(config) or f"NAME whose _target_ is {type(config).__module__}.{type(config).__qualname__}"
