"""What a finished (or running) run left in its folder, and runs pooled by setting.

Runs are pooled into one setting when their configs differ in nothing but seeds (any key named `seed`:
`seed`, and `data.seed`, which follows it) and what names the run's own folder: its output path, and
`ckpt_path` and `resume`, which say where a run continued from, not what it trained.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lmzoo.errors import UserError

SUMMARY = "summary.json"
PROVENANCE = "provenance.json"
PER_RUN_KEYS = ("ckpt_path", "resume")
# The numbers a summary may hold (None where a run has none, as a failed run's losses).
NUMBERS = ("parameters", "active_parameters", "best_val_loss", "best_val_bpb", "steps", "tokens_per_sec", "wall_time_s",
           "flops_per_token", "tokens", "flops", "mfu", "seed")


@dataclass
class RunFolder:
    folder: Path
    # summary.json; a run without one (still running, or killed) has only its name and that status.
    summary: dict
    # The resolved config of provenance.json, else Hydra's .hydra/config.yaml; None when the run has neither.
    config: dict | None

    @property
    def name(self) -> str:
        return self.folder.name

    def value(self, key: str):
        """A value of the summary; old runs lack the newer keys (None)."""
        return self.summary.get(key)


@dataclass
class Setting:
    """Runs whose configs differ only in their seeds, and the label that tells this setting from the others."""

    label: str
    runs: list[RunFolder] = field(default_factory=list)

    def values(self, key: str) -> list:
        """The summaries' values of `key`, of the runs that have one (a failed run has no loss)."""
        return [v for run in self.runs if (v := run.value(key)) is not None and not (isinstance(v, float) and math.isinf(v))]


def read_run(folder: Path) -> RunFolder:
    path = folder / SUMMARY
    summary = read_summary(path) if path.is_file() else {"run": folder.name, "status": "no summary (running, or killed)"}
    return RunFolder(folder, summary, read_config(folder))


def read_summary(path: Path) -> dict:
    """A run's summary.json; one that is not what lmzoo writes is a UserError naming the file."""
    fix = "delete it (the run's row then says 'no summary') or train the run again"
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {fix}") from None
    if not isinstance(row, dict):
        raise UserError(f"{path} holds {type(row).__name__}, not a run's summary; {fix}")
    for key in NUMBERS:
        if row.get(key) is not None and (isinstance(row[key], bool) or not isinstance(row[key], (int, float))):
            raise UserError(f"{path} has a {key} of {row[key]!r}, which is not a number; {fix}")
    return row


def read_config(folder: Path) -> dict | None:
    provenance = folder / PROVENANCE
    if provenance.is_file():
        try:
            config = json.loads(provenance.read_text(encoding="utf-8")).get("config")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise UserError(f"{provenance} is not the provenance.json lmzoo writes; delete it or train the run again") from None
        return config if isinstance(config, dict) else None
    hydra_config = folder / ".hydra" / "config.yaml"
    if hydra_config.is_file():
        # Unresolved: interpolations (the run folder, data.seed) stay as they were written.
        return OmegaConf.to_container(OmegaConf.load(hydra_config), resolve=False)
    return None


def flatten(config: dict, prefix: str = "") -> dict:
    """`{"optim": {"lr": 1e-3}}` as `{"optim.lr": 1e-3}`."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    """The settings of `runs`, in the order of their first run; each labelled by its model and, where several
    settings share a model, by the keys in which they differ."""
    keys, settings, model_of = {}, [], []
    for run in runs:
        setting = setting_of(run)
        # A run without a config cannot be matched with any other: it is a setting of its own.
        key = json.dumps(setting, sort_keys=True, default=str) if setting is not None else f"run:{run.folder}"
        if key not in keys:
            keys[key] = len(settings)
            settings.append((setting, Setting("", [])))
        settings[keys[key]][1].runs.append(run)
    for _, group in settings:
        model_of.append(next((r.value("model") for r in group.runs if r.value("model")), None))
    for index, (setting, group) in enumerate(settings):
        model = model_of[index]
        if model is None or setting is None:
            group.label = f"{model} ({group.runs[0].name})" if model else group.runs[0].name
            continue
        siblings = [s for i, (s, _) in enumerate(settings) if model_of[i] == model and s is not None]
        differing = sorted(k for k in set().union(*siblings) if len({json.dumps(s.get(k), default=str) for s in siblings}) > 1)
        group.label = model + (f" ({', '.join(f'{k}={setting.get(k)}' for k in differing)})" if differing else "")
    return [group for _, group in settings]
