"""What a finished (or running) run left in its folder, and runs pooled by setting.

Runs are pooled into one setting when their configs differ in nothing but seeds (any key named `seed`:
`seed`, the initialization's, and `data.seed`, the training data's order, which follows it unless set) and
what names the run's own folder: its output path (and the log and checkpoint folders in it), and `ckpt_path` and `resume`, which say where a run continued from, not
what it trained.
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmzoo.errors import UserError
from lmzoo.training.provenance import PER_RUN_KEYS, PROVENANCE, flatten
from lmzoo.training.summary import SUMMARY, RunSummary

# Hydra's record of a sweep's command, in the sweep's folder.
MULTIRUN = "multirun.yaml"


@dataclass
class RunFolder:
    folder: Path
    # summary.json; a run without one (still running, or killed) has only its name and that status.
    summary: RunSummary
    # The resolved config of provenance.json, else Hydra's .hydra/config.yaml; None when the run has neither.
    config: dict | None

    @property
    def name(self) -> str:
        return self.folder.name

    def value(self, key: str):
        """A value of the summary (None where it has none)."""
        return getattr(self.summary, key)

    @property
    def seed(self):
        """The initialization seed: the summary's, else the config's (runs of older releases)."""
        return self.value("seed") if self.value("seed") is not None else (self.config or {}).get("seed")

    @property
    def data_seed(self):
        """The seed of the training data's order (data.seed; it follows seed unless set)."""
        return ((self.config or {}).get("data") or {}).get("seed")


@dataclass
class Setting:
    """Runs whose configs differ only in their seeds, and the label that tells this setting from the others."""

    # The config the runs share, flat (see setting_of); None for a run without a config, a setting of its own.
    config: dict | None
    runs: list[RunFolder] = field(default_factory=list)
    label: str = ""

    @property
    def model(self) -> str | None:
        return next((model for run in self.runs if (model := run.value("model"))), None)

    def values(self, key: str) -> list:
        """The summaries' values of `key`, of the runs that have one (a failed run has no loss)."""
        values = [run.value(key) for run in self.runs]
        return [v for v in values if v is not None and not (isinstance(v, float) and math.isinf(v))]


def read_run(folder: Path) -> RunFolder:
    path = folder / SUMMARY
    summary = (RunSummary.read(path) if path.is_file()
               else RunSummary(run=folder.name, status="no summary (running, or killed)"))
    return RunFolder(folder, summary, absolute_data_paths(read_config(folder), folder))


def absolute_data_paths(config: dict | None, folder: Path) -> dict | None:
    """The config with data.path and data.val_path made absolute from the folder the run was started in (Hydra's
    runtime.cwd), so that `../shared/a.txt` and `/work/shared/a.txt` are the same text, and their runs one setting."""
    data = (config or {}).get("data")
    if not isinstance(data, dict):
        return config
    relative = [key for key in ("path", "val_path")
                if isinstance(data.get(key), str) and data[key] and not Path(data[key]).expanduser().is_absolute()]
    hydra_yaml = folder / ".hydra" / "hydra.yaml"
    if not relative or not hydra_yaml.is_file():
        return config
    try:
        cwd = OmegaConf.load(hydra_yaml).hydra.runtime.cwd
    except (OmegaConfBaseException, OSError, ValueError):
        return config
    for key in relative:
        data[key] = os.path.normpath(os.path.join(cwd, data[key]))
    return config


def read_config(folder: Path) -> dict | None:
    provenance = folder / PROVENANCE
    if provenance.is_file():
        try:
            config = json.loads(provenance.read_text(encoding="utf-8")).get("config")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise UserError(f"{provenance} is not the provenance.json lmzoo writes; delete it or train the run "
                            "again") from None
        return config if isinstance(config, dict) else None
    hydra_config = folder / ".hydra" / "config.yaml"
    if not hydra_config.is_file():
        return None
    # A job that failed before writing provenance.json: its config as Hydra saved it, resolved as provenance.json
    # is. The run folder, ${hydra:runtime.output_dir}, is known only while Hydra runs: it is this folder.
    config = OmegaConf.load(hydra_config)
    if "output_dir" in config.get("paths", {}):
        config.paths.output_dir = str(folder)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(config, resolve=False)


def setting_of(run: RunFolder) -> dict | None:
    """The run's config as its setting: seeds and per-run keys left out, its own folder written as {run}."""
    if run.config is None:
        return None
    output_dir = (run.config.get("paths") or {}).get("output_dir")
    setting = {}
    for key, value in flatten(run.config).items():
        if key.split(".")[-1] == "seed" or key in PER_RUN_KEYS or key == "paths.output_dir":
            continue
        if isinstance(value, str) and isinstance(output_dir, str) and output_dir:
            value = value.replace(output_dir, "{run}")
        setting[key] = value
    return setting


def pool(runs: list[RunFolder]) -> list[Setting]:
    """The settings of `runs`, in the order of their first runs, labelled (see label)."""
    settings = {}
    for run in runs:
        config = setting_of(run)
        key = json.dumps(config, sort_keys=True, default=str) if config is not None else f"run:{run.folder}"
        settings.setdefault(key, Setting(config)).runs.append(run)
    for setting in settings.values():
        setting.label = label(setting, list(settings.values()))
    return list(settings.values())


# Settings a run resolves from "auto" as it starts (lmzoo.training.acceleration): a job that failed before then
# keeps "auto" in its config, which is no difference from the runs that resolved it.
RESOLVED_AT_START = ("trainer.precision", "compile")


def differs(key: str, configs: list[dict]) -> bool:
    values = {json.dumps(config.get(key), default=str) for config in configs}
    if key in RESOLVED_AT_START:
        values.discard(json.dumps("auto"))
    return len(values) > 1


# The keys a FLOP, token or minutes budget sets as the run starts (lmzoo.training.budget.run_length's RunLength).
BUDGET_DERIVED = ("trainer.max_steps", "optim.decay_steps", "trainer.val_check_interval", "trainer.max_time")


def determined_by(key: str, keys: list[str], configs: list[dict]) -> bool:
    """Whether configs that agree on `keys` always agree on `key` too."""
    seen = {}
    for config in configs:
        given = json.dumps([config.get(k) for k in keys], default=str)
        if seen.setdefault(given, json.dumps(config.get(key), default=str)) != json.dumps(config.get(key), default=str):
            return False
    return True


def label(setting: Setting, settings: list[Setting]) -> str:
    """The setting's model; where other settings have that model too, with the keys in which they differ,
    `gpt (optim.lr=0.003)`. The steps a budget derives are left out where the other keys say them:
    `gpt (budget.flops=1.5e+13)`, not also its trainer.max_steps and optim.decay_steps. A run without a config, or
    without a model (it failed early), is named by its folder."""
    model = setting.model
    if setting.config is None or model is None:
        return f"{model} ({setting.runs[0].name})" if model else setting.runs[0].name
    siblings = [s.config for s in settings if s.config is not None and s.model == model]
    differing = sorted(key for key in set().union(*siblings) if differs(key, siblings))
    chosen = [key for key in differing if key not in BUDGET_DERIVED]
    differing = [key for key in differing if key in chosen or not determined_by(key, chosen, siblings)]
    shown_keys = ", ".join(f"{key}={shown(setting.config.get(key))}" for key in differing)
    return model + (f" ({shown_keys})" if differing else "")


def shown(value) -> str:
    """A value as a label shows it: a float in its shortest exact form, 1.5e+13 rather than 15000000000000.0."""
    return f"{value:g}" if isinstance(value, float) and float(f"{value:g}") == value else str(value)
