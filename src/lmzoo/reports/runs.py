"""What a finished (or running) run left in its folder, and runs pooled by setting.

Runs are pooled into one setting when their configs differ in nothing but seeds (any key named `seed`:
`seed`, the initialization's, and `data.seed`, the training data's order, which follows it unless set) and
what names the run's own folder: its output path (and the log and checkpoint folders in it), and `ckpt_path` and `resume`, which say where a run continued from, not
what it trained.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmzoo.errors import UserError
from lmzoo.files import write_atomically

SUMMARY = "summary.json"
PROVENANCE = "provenance.json"
# Hydra's record of a sweep's command, in the sweep's folder.
MULTIRUN = "multirun.yaml"
PER_RUN_KEYS = ("ckpt_path", "resume")


@dataclass(kw_only=True)
class RunSummary:
    """A run's summary.json, written by the run when it ends (or by the sweep when a job fails) and read by the
    comparison: its row in the tables. None where a run has no value, as a failed run's losses; a run of an
    older release lacks the newer keys (None)."""

    run: str | None = None
    model: str | None = None
    parameters: int | None = None
    active_parameters: int | None = None
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    # A synthetic task's best val/accuracy (lmzoo.data.tasks); None for text.
    best_val_accuracy: float | None = None
    # Bytes of the decoding state a sequence of the run's block_size needs (lmzoo.training.module.decoding_state_bytes).
    state_bytes: int | None = None
    steps: int | None = None
    tokens_per_sec: float | None = None
    wall_time_s: float | None = None
    # How it ended (RunSummary.ended, or "failed: ERROR"), or, for a run without a summary.json, why it has none.
    status: str | None = None
    flops_per_token: int | None = None
    tokens: int | None = None
    flops: int | None = None
    mfu: float | None = None
    seed: int | None = None
    # The values a tune chose for the run's model (train's tuned=), by config key.
    tuned: dict | None = None

    @staticmethod
    def ended(step: int, diverged_at: int | None, interrupted: bool, stopped_early: bool) -> str:
        """The status of a run that ended at `step`: "diverged at step N" (its val/loss became NaN or inf; the
        comparison ranks it by its best before), "interrupted", "done: stopped early at step N" or "done"."""
        if diverged_at is not None:
            return f"diverged at step {diverged_at}"
        if interrupted:
            return "interrupted"
        return f"done: stopped early at step {step}" if stopped_early else "done"

    def write(self, run_dir: str | Path) -> None:
        """RUN_DIR/summary.json, with the run named by its folder."""
        record = {**asdict(self), "run": Path(run_dir).name}
        write_atomically(Path(run_dir) / SUMMARY, (json.dumps(record, indent=2) + "\n").encode("utf-8"))

    @classmethod
    def read(cls, path: Path) -> "RunSummary":
        """A run's summary.json; one that is not what lmzoo writes is a UserError naming the file. Keys this
        release does not know are left out."""
        fix = "delete it (the run's row then says 'no summary') or train the run again"
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise UserError(f"{path} is not valid JSON ({error}); {fix}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} holds {type(row).__name__}, not a run's summary; {fix}")
        for key in (f.name for f in fields(cls)):
            value = row.get(key)
            if value is None:
                continue
            if key == "tuned":
                if not isinstance(value, dict):
                    raise UserError(f"{path} has tuned values of {value!r}, which is not a mapping of keys to values; "
                                    f"{fix}")
                continue
            if key in TEXT_KEYS and not isinstance(value, str):
                raise UserError(f"{path} has a {key} of {value!r}, which is not text; {fix}")
            if key not in TEXT_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UserError(f"{path} has a {key} of {value!r}, which is not a number; {fix}")
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})


# The keys of a summary that hold text; the others hold numbers.
TEXT_KEYS = ("run", "model", "status")


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


def earlier_run(folder: Path, checkpoints: Path) -> str | None:
    """What in a run folder shows that a run trained there (a checkpoint or its summary), or None. A run that
    failed before either left nothing to continue: a new run there replaces its provenance and config."""
    found = [*sorted(checkpoints.glob("*.ckpt"))[:1], folder / SUMMARY]
    return next((str(path) for path in found if path.is_file()), None)


def check_folder_is_this_runs(folder: Path, checkpoints: Path, resume: str | None, ckpt_path: str | None,
                              key: str) -> None:
    """Refuse to start a new run in a folder that holds another one, so that its checkpoints, summary, provenance
    and config never describe two runs. The run there may only be continued: resume=auto, or ckpt_path= one of
    its own checkpoints. `key` names the setting that chooses the folder (hydra.run.dir, paths.output_dir)."""
    continued = resume == "auto" or (ckpt_path and Path(ckpt_path).expanduser().resolve().parent == checkpoints.resolve())
    if continued or (found := earlier_run(folder, checkpoints)) is None:
        return
    raise UserError(f"{folder} already holds a run ({found}); continue it with resume=auto, or start a new run in "
                    f"another folder with {key}=PATH")


def check_sweep_folder(sweep_dir: Path, overrides: list[str]) -> None:
    """Refuse a sweep into a folder that holds another, so that report.md's command is the one that made its
    table. A sweep there may be continued: the same overrides with resume=auto (each job resumes its own run)."""
    path = sweep_dir / MULTIRUN
    if not path.is_file():
        return
    fix = "choose a new folder with hydra.sweep.dir=PATH"
    if "resume=auto" not in overrides:
        raise UserError(f"{sweep_dir} already holds a sweep ({path}); continue it with the same command and "
                        f"resume=auto, or {fix}")
    earlier = OmegaConf.to_container(OmegaConf.load(path).hydra.overrides.task, resolve=False)
    if [o for o in earlier if not o.startswith("resume=")] != [o for o in overrides if not o.startswith("resume=")]:
        raise UserError(f"{sweep_dir} holds a sweep of other overrides ({' '.join(earlier)}); continue it with "
                        f"those and resume=auto, or {fix}")


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
