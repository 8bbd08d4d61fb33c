"""The values a tune chose (`tuned=PATH`, the tuned.yaml python -m lmzoo.tune wrote), for the run's model: how
tuned.yaml holds them, and how a run takes them."""

import copy
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import read_yaml
from lmzoo.training.choice import Choice


# Where a run takes a fitted value (train's tuned_at): the chosen value, or the searched value below or above the
# best, which the fit passed through; runs at both, at the comparison's budget, show whether the optimum is
# bracketed there too (lmzoo.reports.compare says where the best lies).
TUNED_AT = ("chosen", "lower", "upper")


def tuned_values(tuned: str | None, model: str | None, at: str = "chosen") -> dict | None:
    """The values tuned for `model` (a model= option) in the file `tuned`, by config key, each `at` its chosen value
    or a neighbour (TUNED_AT); None without one."""
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
    entries = values[model]
    if not isinstance(entries, dict) or not all(isinstance(key, str) for key in entries):
        raise UserError(f"{path} holds {entries!r} for model={model}, not its tuned values by key (optim.lr: 0.003); "
                        f"{fix}")
    if at != "chosen":
        fitted = [key for key, entry in entries.items() if isinstance(entry, dict) and "neighbours" in entry]
        if not fitted:
            raise UserError(f"{path} holds no searched values beside model={model}'s tuned ones (a fit through the "
                            f"best and its neighbours chose none of them), so tuned_at={at} has none to take; run it "
                            "with tuned_at=chosen, or tune it again with this release")
        return {key: entry["neighbours"][TUNED_AT.index(at) - 1] if key in fitted else tuned_value(entry)
                for key, entry in entries.items()}
    return {key: tuned_value(entry) for key, entry in entries.items()}


def typed_over_tuned(tuned: dict | None, cfg: DictConfig, typed: frozenset[str]) -> dict | None:
    """The `tuned` values less those of the keys the command line set (`typed`): a value typed beside tuned= is
    the one the run takes, and a line says which tuned value it replaces."""
    if not tuned:
        return tuned
    at = cfg.get("tuned_at", "chosen")
    which = "tuned" if at == "chosen" else f"searched beside the tuned value (tuned_at={at})"
    for key in sorted(set(tuned) & typed):
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        print(f"{key}={value} as typed, not {tuned[key]} as {which} in {cfg.tuned}", file=sys.stderr)
    return {key: value for key, value in tuned.items() if key not in typed}


def tuned_entry(choice: Choice) -> dict:
    """A model's entry in tuned.yaml: each key's value, and where a fit chose it its interval and the searched
    values beside the best (its neighbours, which tuned_at=lower/upper takes)."""
    return {key: {"value": value, "interval": list(choice.fit.interval), "neighbours": list(choice.fit.neighbours)}
            if choice.fit and key == choice.fit.key else value for key, value in choice.values.items()}


def tuned_value(entry):
    """The value a run takes from an entry of tuned.yaml (tuned_entry): {value: V, interval: [LOW, HIGH], ...}, or
    V as older releases (and values chosen without a fit) write it."""
    return entry["value"] if isinstance(entry, dict) and "value" in entry else entry


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
