"""The values a tune chose (`tuned=PATH`, the tuned.yaml python -m lmzoo.tune wrote), for the run's model."""

import copy
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import read_yaml


def tuned_values(tuned: str | None, model: str | None) -> dict | None:
    """The values tuned for `model` (a model= option) in the file `tuned`, by config key; None without one."""
    if not tuned:
        return None
    path = Path(tuned).expanduser()
    fix = "pass the tuned.yaml that python -m lmzoo.tune wrote in its folder"
    if not path.is_file():
        raise UserError(f"tuned={tuned} does not exist; {fix}")
    values = OmegaConf.to_container(read_yaml(path, fix))
    if not isinstance(values, dict) or model not in values:
        models = ", ".join(map(str, values)) if isinstance(values, dict) else "none"
        raise UserError(f"{path} holds no tuned values for model={model} (it has {models}); tune it with "
                        f"python -m lmzoo.tune model={model}")
    chosen = values[model]
    if not isinstance(chosen, dict) or not all(isinstance(key, str) for key in chosen):
        raise UserError(f"{path} holds {chosen!r} for model={model}, not its tuned values by key (optim.lr: 0.003); "
                        f"{fix}")
    return chosen


def typed_over_tuned(tuned: dict | None, cfg: DictConfig, typed: frozenset[str]) -> dict | None:
    """The `tuned` values less those of the keys the command line set (`typed`): a value typed beside tuned= is
    the one the run takes, and a line says which tuned value it replaces."""
    if not tuned:
        return tuned
    for key in sorted(set(tuned) & typed):
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        print(f"{key}={value} as typed, not {tuned[key]} as tuned in {cfg.tuned}", file=sys.stderr)
    return {key: value for key, value in tuned.items() if key not in typed}


def with_tuned(cfg: DictConfig, tuned: dict | None) -> DictConfig:
    """A read-only copy of `cfg` with the `tuned` values (tuned_values) set in it; `cfg` stays as it was composed."""
    config = copy.deepcopy(cfg)
    for key, value in (tuned or {}).items():
        if OmegaConf.select(config, key, default=KeyError, throw_on_resolution_failure=False) is KeyError:
            raise UserError(f"{Path(cfg.tuned).expanduser()} tunes {key}, which the config has no key for; tune again "
                            "with this release")
        OmegaConf.update(config, key, value)
    OmegaConf.set_readonly(config, True)
    return config
