"""A sweep's report.md, beside its comparison.md: the command that ran the sweep, the tables, val loss against
training FLOPs (or tokens, for runs that do not record their FLOPs) as a PNG it links to, and for synthetic tasks
best val/accuracy against the bytes of decoding state."""

import shlex
from pathlib import Path

from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.reports.compare import TABLE, compare, compare_sweeps, read_sweeps
from lmzoo.reports.plot import X_AXES, load_runs, plot_settings, plot_state, save
from lmzoo.reports.runs import MULTIRUN
from lmzoo.training.summary import SUMMARY

REPORT = "report.md"
FIGURE = "val_loss.png"
STATE_FIGURE = "accuracy_state.png"


def sweep_overrides(sweep_dir: Path) -> tuple[str, str, list[str]] | None:
    """The folder a sweep ran in, its config name and its overrides as typed, as Hydra recorded them in
    SWEEP_DIR/multirun.yaml; None without that file."""
    path = sweep_dir / MULTIRUN
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).hydra
    # Unresolved: an override may hold an interpolation, `optim.decay_steps=${trainer.max_steps}`, as typed.
    overrides = OmegaConf.to_container(hydra.overrides, resolve=False)
    # -m is Hydra's own hydra.mode=MULTIRUN.
    overrides = [o for o in overrides["hydra"] if o != "hydra.mode=MULTIRUN"] + overrides["task"]
    options = [f"--config-dir={source.path.removeprefix('file://')}" for source in hydra.runtime.config_sources
               if source.provider == "command-line"]
    return hydra.runtime.cwd, hydra.job.config_name, [*options, *overrides]


def sweep_command(sweep_dir: Path) -> tuple[str, str] | None:
    """The folder the sweep ran in and its command: every override as typed (quoted for a POSIX shell); None
    without SWEEP_DIR/multirun.yaml."""
    recorded = sweep_overrides(sweep_dir)
    if recorded is None:
        return None
    cwd, config_name, overrides = recorded
    options = ["-m"] + (["--config-name", config_name] if config_name != "train" else [])
    return cwd, shlex.join(["python", "-m", "lmzoo.train", *options, *overrides])


def figure_section(sweep_dirs: list[Path], out: Path) -> str:
    """Draw OUT/val_loss.png from the sweeps' runs and return its Markdown; sweeps with no curves yet get a line
    saying so."""
    try:
        runs = load_runs(sweep_dirs)
        x = "flops" if any(run.folder.value("flops_per_token") for run in runs) else "tokens"
        figure, left_out = plot_settings(runs, x)
    except UserError as error:
        return f"No curves yet: {error}."
    save(figure, out / FIGURE)
    note = f" Left out, for lack of their {X_AXES[x]}: {', '.join(left_out)}." if left_out else ""
    return (f"![val/loss against {X_AXES[x]}]({FIGURE})\n\nval/loss against {X_AXES[x]}: one colour per row of the "
            f"comparison, the mean of its seeds as a line and their range as a band.{note}")


def state_section(sweep_dirs: list[Path], out: Path) -> str:
    """Draw OUT/accuracy_state.png and return its section, where runs of a synthetic task have finished; else ''."""
    runs = read_sweeps(sweep_dirs)
    if not any(run.value("best_val_accuracy") is not None for run in runs):
        return ""
    try:
        figure = plot_state(runs)
    except UserError as error:
        return f"\n\n## Accuracy against state size\n\nNo points yet: {error}."
    save(figure, out / STATE_FIGURE)
    return (f"\n\n## Accuracy against state size\n\n![accuracy against decoding state]({STATE_FIGURE})\n\n"
            "Accuracy against the bytes of decoding state a sequence needs: a panel per task, a line per "
            "architecture, a point per state size (its width): of its settings (learning rates), the one whose "
            "best val/accuracy has the highest mean over seeds, at its mean test/accuracy (best val/accuracy where "
            "runs have no test split).")


def how_section(sweep_dir: Path) -> str:
    """Where the sweep ran and its command, from its multirun.yaml."""
    command = sweep_command(sweep_dir)
    return (f"In `{command[0]}`:\n\n```bash\n{command[1]}\n```" if command
            else "Not recorded: this folder has no multirun.yaml (Hydra writes it when a sweep starts).")


def write_report(sweep_dir: str | Path) -> str:
    """Write SWEEP_DIR/comparison.md, report.md and its figure; return the comparison's text."""
    sweep_dir = Path(sweep_dir)
    tables = compare(sweep_dir)
    text = (f"# Sweep {sweep_dir.name}\n\nWritten after every job of the sweep, and by `python -m lmzoo.compare "
            f"{sweep_dir}`.\n\n## Command\n\n{how_section(sweep_dir)}\n\n## Comparison\n\n{tables}\n\n## Curves\n\n"
            f"{figure_section([sweep_dir], sweep_dir)}{state_section([sweep_dir], sweep_dir)}\n")
    write_atomically(sweep_dir / REPORT, text.encode("utf-8"))
    return tables


def write_combined_report(sweep_dirs: list[Path], out: Path) -> str:
    """Write OUT/comparison.md, report.md and its figure for the runs of several sweeps pooled; return the
    comparison's text. OUT may not hold a sweep or a run: its own tables describe its own runs."""
    for held in (MULTIRUN, SUMMARY):
        if (out / held).is_file():
            raise UserError(f"--out {out} holds a sweep or a run ({out / held}), whose tables describe its own "
                            "runs; pass a new folder")
    tables = compare_sweeps(sweep_dirs, None)
    commands = "\n\n".join(f"`{d}`: {how_section(d)}" for d in sweep_dirs)
    typed = shlex.join(["python", "-m", "lmzoo.compare", *map(str, sweep_dirs), "--out", str(out)])
    write_atomically(out / TABLE, (tables + "\n").encode("utf-8"), "choose a writable folder with --out DIR")
    title = f"{len(sweep_dirs)} sweep{'s' if len(sweep_dirs) > 1 else ''}"
    text = (f"# Comparison of {title}\n\nWritten by `{typed}`, their runs pooled as one sweep's.\n\n"
            f"## Commands\n\n{commands}\n\n## Comparison\n\n{tables}\n\n## Curves\n\n"
            f"{figure_section(sweep_dirs, out)}{state_section(sweep_dirs, out)}\n")
    write_atomically(out / REPORT, text.encode("utf-8"))
    return tables
