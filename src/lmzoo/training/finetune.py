"""Start training from pretrained weights (`init_from`), in full or through adapters (`finetune=lora`)."""

from pathlib import Path

from lmzoo.checkpoints.integrity import weights_sha256
from lmzoo.checkpoints.load import build_from, check_not_diverged
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel, ModelConfig
from lmzoo.models.lora import LoRA, merge
from lmzoo.models.presets import preset_of


def from_pretrained(source: str, wanted: ModelConfig, tokenizer_spec: dict, block_size: int,
                    recipe: LoRA | None = None) -> tuple[LanguageModel, dict | None]:
    """The pretrained model of `source` (init_from), checked against the run: the architecture and choices of
    `wanted` (what model= builds; its shape is the weights'), the data's tokenizer and the context. It takes
    `wanted`'s dropout; with a finetune `recipe`, only its adapters train. Also returns the recipe's record,
    naming the base and its weights' sha256, or None."""
    pretrained, record = build_from(source)
    check_not_diverged(record, source)
    merge(pretrained)
    # init_from takes every setting but the architecture's choices (the shape) from the weights.
    if type(pretrained.config) is not type(wanted) or wanted.choice_values() != pretrained.config.choice_values():
        raise UserError(f"init_from={source} holds another architecture than model= builds; "
                        f"pass model={model_option(pretrained.config)}")
    if record.tokenizer != tokenizer_spec:
        raise UserError(f"init_from={source} uses the {describe_tokenizer(record.tokenizer)} but the data uses the "
                        f"{describe_tokenizer(tokenizer_spec)}; pick data tokenized the same way "
                        "(data=shakespeare for GPT-2)")
    if block_size > pretrained.block_size:
        raise UserError(f"block_size={block_size} exceeds the context of init_from={source}; "
                        f"pass block_size={pretrained.block_size} or less")
    settings = pretrained.config.as_dict()
    if "dropout" in settings and hasattr(wanted, "dropout"):
        settings["dropout"] = wanted.dropout
    model = type(pretrained.config)(**settings).build()
    model.load_state_dict(pretrained.state_dict())
    if recipe is None:
        return model, None
    recipe.apply(model)
    return model, {**recipe.spec, "base": source_path(source), "base_sha256": weights_sha256(pretrained.state_dict())}


def source_path(source: str) -> str:
    """A local source as an absolute path, so that it names the same weights from any folder; hf:NAME as it is."""
    return source if source.startswith("hf:") else str(Path(source).expanduser().resolve())


def model_option(config: ModelConfig) -> str:
    """The model= option that builds an architecture with these choices."""
    return preset_of(config) or f"NAME whose _target_ is {type(config).__module__}.{type(config).__qualname__}"
