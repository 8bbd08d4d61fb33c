"""The values a tune chose (`tuned=PATH`, the tuned.yaml python -m lmzoo.tune wrote), for the run's model."""

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError


def tuned_values(tuned: str | None, model: str | None) -> dict | None:
    """The values tuned for `model` (a model= option) in the file `tuned`, by config key; None without one."""
    if not tuned:
        return None
    path = Path(tuned).expanduser()
    if not path.is_file():
        raise UserError(f"tuned={tuned} does not exist; pass the tuned.yaml that python -m lmzoo.tune wrote in its "
                        "folder")
    values = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(values, dict) or model not in values:
        models = ", ".join(values) if isinstance(values, dict) else "none"
        raise UserError(f"{path} holds no tuned values for model={model} (it has {models}); tune it with "
                        f"python -m lmzoo.tune model={model}")
    return values[model]


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
