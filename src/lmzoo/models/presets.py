"""The named presets of the zoo, in one table: conf/model/NAME.yaml (installed as lmzoo.conf), each naming an
architecture's config class and holding only the settings in which it differs from that class's defaults (litgpt's
name -> overrides).

A preset extends its class's node `architecture/CLASS` (every field at its default, which conf/__init__.py
registers with Hydra from `architecture_defaults`), so `model=NAME` composes the whole config and `--cfg job` shows
every value. The GPT-2 import, the exporters, `init_from` and resuming read the same files through
`preset_config` and `preset_of`; the tests and benchmarks list the zoo with `preset_names`.
"""

import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf

from lmzoo.models.base import FeedForward, ModelConfig, SequenceMixer, plain

# A preset's defaults list names its architecture as ARCHITECTURE/CLASS@_here_.
ARCHITECTURE = "/architecture/"


class Preset(NamedTuple):
    config_class: type[ModelConfig]
    # What the preset sets beyond the class's defaults, with what it takes from the preset it extends.
    settings: dict
    # The preset it extends (its defaults list names it), or None where it extends the class's defaults.
    extends: str | None
    # What its own file sets.
    own: dict


def presets_folder() -> Path:
    """conf/model/, found without importing lmzoo.conf (whose import registers Hydra's nodes)."""
    return Path(importlib.util.find_spec("lmzoo.conf").submodule_search_locations[0]) / "model"


def preset_names() -> list[str]:
    """Every preset, sorted: the names `model=` takes."""
    return sorted(path.stem for path in presets_folder().glob("*.yaml"))


@functools.cache
def preset(name: str) -> Preset:
    """Preset `name`: it extends its architecture's node (/architecture/CLASS@_here_) or another preset (NAME)."""
    file = presets_folder() / f"{name}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    bases = [str(entry) for entry in own.pop("defaults", []) if str(entry) != "_self_"]
    classes = {config_class.__name__: config_class for config_class in architectures()}
    base = bases[0].removeprefix(ARCHITECTURE).split("@")[0] if len(bases) == 1 else None
    if bases and bases[0].startswith(ARCHITECTURE) and base in classes:
        return Preset(classes[base], own, None, own)
    if base in preset_names():
        extended = preset(base)
        return Preset(extended.config_class, merged(extended.settings, own), base, own)
    raise ValueError(f"{file} must extend one architecture ({ARCHITECTURE}CLASS@_here_, CLASS one of "
                     f"{', '.join(classes)}) or one preset of conf/model/ in its defaults list")


def preset_config(name: str, **settings) -> ModelConfig:
    """Preset `name`'s config with `settings` over it (vocab_size, and block_size where the class has one); a
    part's settings (`mixers={"NAME": {...}}`) go over the preset's knob by knob."""
    found = preset(name)
    return found.config_class(**merged(found.settings, settings))


def merged(base: dict, over: dict) -> dict:
    """`over` on `base`, mappings merged key by key, at any depth."""
    result = dict(base)
    for key, value in over.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key),
                                                                                             dict) else value
    return result


def preset_of(config: ModelConfig) -> str | None:
    """The preset of `config`'s class that makes the same architecture choices (`ModelConfig.choice_values`), or
    None."""
    for name in preset_names():
        config_class, settings, _, _ = preset(name)
        if config_class is type(config):
            chosen = merged(architecture_defaults(config_class), settings)
            if all(as_list(value) == as_list(looked_up(chosen, key, getattr(config_class, key, None)))
                   for key, value in config.choice_values().items()):
                return name
    return None


def looked_up(settings: dict, key: str, default=None):
    """The value of a dotted `key` (mixers.attention.qk_norm) in nested `settings`."""
    for part in key.split("."):
        if not isinstance(settings, dict) or part not in settings:
            return default
        settings = settings[part]
    return settings


def flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings by their dotted keys: {"mixers": {"NAME": {"knob": 8}}} as {"mixers.NAME.knob": 8}."""
    result = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            result |= flat(value, f"{prefix}{key}.")
        else:
            result[f"{prefix}{key}"] = value
    return result


def as_list(value):
    """Tuples as lists: a config from the command line holds lists where a dataclass's defaults may be tuples."""
    return list(value) if isinstance(value, tuple) else value


def architectures() -> list[type[ModelConfig]]:
    """Every architecture's config class (lmzoo.models imports them all)."""
    import lmzoo.models  # noqa: F401  (the package imports every architecture)

    found, pending = [], [ModelConfig]
    while pending:
        for subclass in pending.pop().__subclasses__():
            if subclass not in found:
                found.append(subclass)
                pending.append(subclass)
    return found


def architecture_defaults(config_class: type[ModelConfig]) -> dict:
    """The config node of `config_class`: its `_target_` and each field a config file may set, at its default;
    vocab_size comes from the data, block_size from the run's (`${block_size}`)."""
    node = {"_target_": f"{config_class.__module__}.{config_class.__qualname__}"}
    common = {field.name for field in dataclasses.fields(ModelConfig)}
    # The architecture's own fields first, those every config has (target_params) last.
    for field in sorted(dataclasses.fields(config_class), key=lambda field: field.name in common):
        if not field.init or field.name == "vocab_size":
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = "${block_size}" if field.name == "block_size" else "???"
        node[field.name] = as_node(value)
    return node


def as_node(value):
    """A default as a config node holds it: settings dataclasses as mappings, tuples as lists."""
    value = plain(value)
    if isinstance(value, dict):
        return {key: as_node(item) for key, item in value.items()}
    return as_list(value)


def resized(config: ModelConfig, width: int, depth: int) -> ModelConfig | None:
    """`config` at `width` (its width_field, with what follows from it: heads, head size) and `depth` layers, or
    enough for one cycle of its layer pattern, where it has them; None where no valid config has that width."""
    if hasattr(config, "n_layer"):
        config = dataclasses.replace(config, n_layer=max(depth, len(getattr(config, "layer_pattern", ()))))
    return config if config.width_field is None else config.with_width(width)


def model_overrides(preset_config: ModelConfig, config: ModelConfig) -> list[str]:
    """The command-line overrides (`model.KEY=VALUE`, a part's knob as model.mixers.NAME.KNOB) that turn
    `preset_config` into `config`, of its class."""
    before = flat(preset_config.as_dict())
    return [f"model.{key}={override_value(value)}" for key, value in flat(config.as_dict()).items()
            if value != before.get(key)]


def override_value(value) -> str:
    """`value` as Hydra's override grammar writes it: true, null, [a,b]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(override_value, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def moved_keys(key: str) -> list[str]:
    """Where lmzoo 0.2's flat model key `key` (window, qk_norm, ssm_state, mlp_ratio, ...) is now: the knob of each
    part whose settings name it as `former`, as model.mixers.NAME.KNOB or model.ffns.NAME.KNOB."""
    return [f"model.{group}.{name}.{part.Settings.former[key]}"
            for group, registry in (("mixers", SequenceMixer.registry), ("ffns", FeedForward.registry))
            for name, part in registry.items() if key in part.Settings.former]
