"""Start training from pretrained weights (`init_from`), in full or through adapters (`finetune=lora`)."""

from importlib import resources
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo import lora
from lmzoo.checkpoint import build_from, describe_tokenizer
from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel


def from_pretrained(cfg: DictConfig, tokenizer_spec: dict, optim: dict) -> LanguageModel:
    """`model=` with init_from's shape and weights; with a finetune recipe, only its adapters train."""
    source = cfg.init_from
    pretrained, info = build_from(source)
    lora.merge(pretrained)
    wanted = get_class(cfg.model._target_)
    if type(pretrained) is not wanted:
        raise UserError(f"init_from={source} holds a {type(pretrained).__name__} but model= builds {wanted.__name__}; "
                        f"pass model={model_option(type(pretrained))}")
    if info["tokenizer"] != tokenizer_spec:
        raise UserError(f"init_from={source} uses the {describe_tokenizer(info['tokenizer'])} but the data uses the "
                        f"{describe_tokenizer(tokenizer_spec)}; pick data tokenized the same way "
                        "(data=shakespeare for GPT-2)")
    if cfg.block_size > pretrained.block_size:
        raise UserError(f"block_size={cfg.block_size} exceeds the context of init_from={source}; "
                        f"pass block_size={pretrained.block_size} or less")
    shape = {name: value for name, value in info["config"].items() if name not in ("dropout", "optim")}
    model = instantiate(cfg.model, **shape, optim=optim, _convert_="all")
    model.load_state_dict(pretrained.state_dict())
    if cfg.finetune:
        recipe = instantiate(cfg.finetune, _convert_="all")
        recipe.apply(model)
        base = source if source.startswith("hf:") else str(Path(source).expanduser().resolve())
        model.finetune = {**recipe.spec, "base": base}
        # Checkpoints hold only the adapters, so resuming loads them over the base built here.
        model.strict_loading = False
    return model


def model_option(cls: type) -> str:
    """The model= option that builds `cls`."""
    for path in sorted((resources.files("lmzoo.conf") / "model").iterdir()):
        if path.name.endswith(".yaml") and get_class(OmegaConf.load(path)._target_) is cls:
            return path.name.removesuffix(".yaml")
    return f"NAME whose _target_ is {cls.__module__}.{cls.__qualname__}"
