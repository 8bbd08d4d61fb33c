"""The comparison of a sweep, from the summary.json each run writes when it ends (and its provenance.json).

Two tables: one row per setting (runs pooled over seeds, see lmzoo.reports.runs), ranked by mean best
val/bpb, each with Welch's t-test against the best (Holm-corrected when several settings are tested against it),
and where a model ran at its tuned value and beside it (train's tuned_at), where its best lies; then one row per
run, in job order.
"""

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.reports.runs import RunFolder, Setting, pool, read_run
from lmzoo.reports.stats import holm, welch_t_test
from lmzoo.training.choice import STUDY
from lmzoo.training.summary import SUMMARY
from lmzoo.training.tuned import TUNED_AT

TABLE = "comparison.md"
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    format: Callable[[object], str] = str


def thousands(value) -> str:
    return f"{value:,.0f}"


def loss(value) -> str:
    return "-" if value is None or math.isinf(value) else f"{value:.4f}"


def flops(value) -> str:
    return f"{value:.2e}"


def percent(value) -> str:
    return f"{100 * value:.3g}%"


def seconds(value) -> str:
    return f"{value:.1f} s"


RUN_COLUMNS = [
    Column("model", "setting"),
    Column("seed", "seed"),
    Column("data seed", "data_seed"),
    Column("parameters", "parameters", thousands),
    Column("active parameters", "active_parameters", thousands),
    Column("best val/loss", "best_val_loss", loss),
    Column("best val/bpb", "best_val_bpb", loss),
    Column("steps", "steps", thousands),
    Column("FLOPs", "flops", flops),
    Column("tokens/s", "tokens_per_sec", thousands),
    Column("MFU", "mfu", percent),
    Column("wall time", "wall_time_s", seconds),
    Column("status", "status"),
    Column("run", "run"),
]
# Per setting, after its rank, n, losses and test: the mean over its runs.
MEAN_COLUMNS = [Column("parameters", "parameters", thousands), Column("FLOPs", "flops", flops),
                Column("wall time", "wall_time_s", seconds), Column("tokens/s", "tokens_per_sec", thousands),
                Column("MFU", "mfu", percent)]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those holding the record of their command, .hydra/, or a summary), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() or (p / SUMMARY).is_file()]
    return sorted(jobs, key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else math.inf,
                                       p.name))


def run_folders(folder: Path) -> list[Path]:
    """The run folders under `folder`: its own jobs in job order, then those under its other folders (sweeps beside
    runs, as in outputs/), each in name order. Hidden folders, links and a tune's studies (trials, not runs to
    compare) are passed over."""
    jobs = job_dirs(folder)
    try:
        others = sorted(path for path in folder.iterdir() if path.is_dir() and not path.is_symlink()
                        and not path.name.startswith(".") and path not in jobs and not (path / STUDY).is_file())
    except OSError:
        return jobs
    return jobs + [run for other in others for run in run_folders(other)]


def read_sweep(sweep_dir: str | Path) -> list[RunFolder]:
    """The runs of a sweep folder (or of a folder of runs and sweeps), in job order; a folder that is none, holds
    no runs, or is itself one run's, is a UserError."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{str(sweep_dir)!r} is not a folder; pass a sweep folder such as outputs/sweeps/DATE_TIME")
    if (sweep_dir / ".hydra").is_dir() or (sweep_dir / SUMMARY).is_file():
        raise UserError(f"{sweep_dir} is one run's folder, not a sweep's; pass the folder that holds its runs, such "
                        f"as {sweep_dir.parent}")
    runs = [read_run(job) for job in run_folders(sweep_dir)]
    if not runs:
        raise UserError(f"no runs in {sweep_dir}; pass the folder a sweep (python -m lmzoo.train -m ...) wrote")
    return runs


def read_sweeps(sweep_dirs: list[str | Path]) -> list[RunFolder]:
    """The runs of several sweep folders, each in job order; a folder given twice (its runs counted twice) is a
    UserError."""
    resolved = [Path(sweep_dir).resolve() for sweep_dir in sweep_dirs]
    for sweep_dir, path in zip(sweep_dirs, resolved):
        if resolved.count(path) > 1:
            raise UserError(f"{sweep_dir} is given more than once; pass each sweep folder once")
    return [run for sweep_dir in sweep_dirs for run in read_sweep(sweep_dir)]


def run_names(runs: list[RunFolder]) -> dict[int, str]:
    """Each run's name in the tables: its job folder, or SWEEP/JOB where the runs come from several sweeps, whose
    job folders share names."""
    several = len({run.folder.parent for run in runs}) > 1
    return {id(run): f"{run.folder.parent.name}/{run.name}" if several else run.name for run in runs}


def table(rows: list[dict], columns: list[Column]) -> str:
    """A Markdown table; a value a row lacks (a failed run's metrics, a key older runs did not write) shows as '-'."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = ["-" if row.get(c.key) is None else c.format(row[c.key]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_rows(runs: list[RunFolder], settings: list[Setting], names: dict[int, str]) -> list[dict]:
    """One row per run, in the order of `runs`, named by its setting's label; the seed from the config where the
    summary has none (runs of older releases)."""
    label = {id(run): setting.label for setting in settings for run in setting.runs}
    return [{**asdict(run.summary), "setting": label[id(run)], "seed": run.seed, "data_seed": run.data_seed,
             "run": names[id(run)]} for run in runs]


def ranking_key(settings: list[Setting]) -> str:
    """best_val_bpb, comparable across tokenizers, where every finished run has it; else best_val_loss."""
    finished = [run for s in settings for run in s.runs if run.value("best_val_loss") is not None]
    return "best_val_bpb" if all(run.value("best_val_bpb") is not None for run in finished) else "best_val_loss"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def welch_p(values: list[float], best: list[float]) -> float | str:
    """Welch's t-test's p-value of `values` against the best setting's, or why there is none."""
    if len(values) < 2 or len(best) < 2:
        return "n = 1: no significance can be claimed"
    try:
        return welch_t_test(values, best).p
    except ValueError:
        return "no spread between seeds: no test"


def significance(p_values: list[float | str]) -> list[str]:
    """Each setting's test against the best, Holm-corrected when there are several tests."""
    tested = [p for p in p_values if not isinstance(p, str)]
    corrected = iter(holm(tested))
    note = " (Holm)" if len(tested) > 1 else ""
    return [p if isinstance(p, str) else
            f"p = {(q := next(corrected)):.2g}{note}: {'significant' if q < SIGNIFICANCE else 'not significant'}"
            for p in p_values]


def tuned(setting: Setting) -> str | None:
    """The values a tune chose for the setting's model (train's `tuned=`), as overrides."""
    values = next((run.value("tuned") for run in setting.runs if run.value("tuned")), None)
    return " ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in values.items()) if values else None


def seeds_note(settings: list[Setting]) -> str:
    """Which noise the means average over: the init seed (`seed`), the data order (`data.seed`), or both."""
    varied = {"seed": False, "data.seed": False}
    for setting in settings:
        varied["seed"] |= len({run.seed for run in setting.runs}) > 1
        varied["data.seed"] |= len({run.data_seed for run in setting.runs}) > 1
    if varied["seed"] and varied["data.seed"]:
        return "Seeds vary both the initialization (seed) and the order of the training data (data.seed)."
    if varied["seed"]:
        return "Seeds vary the initialization only (seed); the order of the training data (data.seed) is fixed."
    if varied["data.seed"]:
        return "Seeds vary the order of the training data only (data.seed); the initialization (seed) is fixed."
    return "Each setting has one seed."


def setting_table(settings: list[Setting], names: dict[int, str]) -> str:
    """One row per setting with a result, best first."""
    key = ranking_key(settings)
    ranked = sorted((s for s in settings if s.values(key)), key=lambda s: statistics.fmean(s.values(key)))
    if not ranked:
        return "No run has finished yet." + unranked(settings, key, names)
    columns = [Column("rank", "rank"), Column("model", "label"), Column("n", "n"),
               Column("best val/bpb", "bpb"), Column("best val/loss", "loss"), Column("vs best", "test"), *MEAN_COLUMNS]
    if any(tuned(setting) for setting in ranked):
        columns.insert(2, Column("tuned", "tuned"))
    tests = ["best", *significance([welch_p(s.values(key), ranked[0].values(key)) for s in ranked[1:]])]
    rows = []
    for rank, (setting, test) in enumerate(zip(ranked, tests), 1):
        n, total = len(setting.values(key)), len(setting.runs)
        row = {"rank": rank, "label": setting.label, "n": f"{n}" if n == total else f"{n} of {total}",
               "bpb": mean_sd(setting.values("best_val_bpb")), "loss": mean_sd(setting.values("best_val_loss")),
               "test": test, "tuned": tuned(setting)}
        for column in MEAN_COLUMNS:
            values = setting.values(column.key)
            row[column.key] = statistics.fmean(values) if values else None
        rows.append(row)
    metric = "val/bpb" if key == "best_val_bpb" else "val/loss"
    tested = sum(test.startswith("p = ") for test in tests)
    holm_note = (f", its p-values Holm-corrected for the {tested} settings tested against rank 1" if tested > 1 else "")
    return (f"Ranked by mean best {metric} over seeds (mean ± standard deviation, n runs); vs best: Welch's t-test "
            f"of best {metric} against rank 1{holm_note}, significant when p < {SIGNIFICANCE}. {seeds_note(ranked)}"
            "\n\n" + table(rows, columns) + unranked(settings, key, names) + incomparable(ranked, key)
            + brackets(ranked, key))


def brackets(ranked: list[Setting], key: str) -> str:
    """For each model run at its tuned value and at a searched value beside it (tuned_at=lower, upper), settings
    alike but for that, where its best lies: between the two (the optimum is bracketed at this budget) or at one."""
    groups = {}
    for setting in ranked:
        at = (setting.config or {}).get("tuned_at")
        values = next((run.value("tuned") for run in setting.runs if run.value("tuned")), None)
        if at not in TUNED_AT or not values:
            continue
        rest = {k: v for k, v in setting.config.items() if k != "tuned_at" and k not in values}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), {})[at] = setting
    lines = []
    for group in groups.values():
        if "chosen" not in group or len(group) < 2:
            continue
        means = {at: statistics.fmean(setting.values(key)) for at, setting in group.items()}
        best = min(means, key=means.get)
        points = ", ".join(f"{at} {tuned(group[at])} {means[at]:.4f}" for at in TUNED_AT if at in group)
        if best != "chosen":
            verdict = (f"best at the {best} value: the optimum lies {'below' if best == 'lower' else 'above'} the tuned "
                       "value at this budget, not bracketed")
        elif len(group) == 3:
            verdict = "best at the tuned value: the optimum is bracketed at this budget"
        else:
            verdict = f"best at the tuned value, run beside it only at the {next(at for at in group if at != 'chosen')}"
        lines.append(f"{group['chosen'].model} ({points}): {verdict}.")
    if not lines:
        return ""
    metric = "val/bpb" if key == "best_val_bpb" else "val/loss"
    return (f"\n\nWhere the best lies, by mean best {metric} at the tuned value and at the searched values beside "
            "the best (tuned_at):\n\n" + "\n".join(f"- {line}" for line in lines))


# What says which text a run trained on; the data's name and tokenizer say how it was cut into tokens.
DATA_TEXT_KEYS = ("path", "url", "sha256", "dataset", "val_path", "train_fraction")


def incomparable(ranked: list[Setting], key: str) -> str:
    """A warning where the ranked runs trained on different text, or, ranked by loss, with different tokenizers
    (runs without a config say neither)."""
    ranked = [s for s in ranked if s.config]
    texts = {json.dumps([s.config.get(f"data.{k}") for k in DATA_TEXT_KEYS], default=str) for s in ranked}
    if len(texts) > 1:
        names = sorted({str(s.config.get("data.name")) for s in ranked})
        return (f"\n\nWarning: these runs trained on different text ({', '.join(names)}): neither their losses nor "
                "their bits per byte compare.")
    tokenizers = {json.dumps({k: v for k, v in s.config.items() if k.startswith("data.tokenizer")},
                             default=str, sort_keys=True) for s in ranked}
    if key == "best_val_loss" and len(tokenizers) > 1:
        return ("\n\nWarning: ranked by val/loss across tokenizers, which does not compare (a token is not the "
                "same unit); some runs lack bits per byte, which would.")
    return ""


def unranked(settings: list[Setting], key: str, names: dict[int, str]) -> str:
    """A line naming the runs the ranking leaves out, or counts only up to a divergence, and why."""
    runs = [run for setting in settings for run in setting.runs]
    left_out = [f"{names[id(run)]} ({run.value('status')})" for run in runs if run.value(key) is None]
    diverged = [f"{names[id(run)]} ({run.value('status')})" for run in runs
                if run.value(key) is not None and str(run.value("status")).startswith("diverged")]
    lines = ([f"Not ranked: {', '.join(left_out)}."] if left_out else []) + (
        [f"Ranked by their best before they diverged: {', '.join(diverged)}."] if diverged else [])
    return "".join(f"\n\n{line}" for line in lines)


def tables(runs: list[RunFolder]) -> str:
    """The comparison: settings ranked, then every run."""
    settings = pool(runs)
    names = run_names(runs)
    return f"{setting_table(settings, names)}\n\nRuns:\n\n{table(run_rows(runs, settings, names), RUN_COLUMNS)}"


def compare(sweep_dir: str | Path) -> str:
    """Write SWEEP_DIR/comparison.md from the runs' summaries, and return its text."""
    return compare_sweeps([sweep_dir], Path(sweep_dir))


def compare_sweeps(sweep_dirs: list[str | Path], out: Path | None) -> str:
    """The comparison of the runs of several sweeps, pooled as one sweep's: written to OUT/comparison.md (unless
    out is None), and returned."""
    text = tables(read_sweeps(sweep_dirs))
    if out is not None:
        write_atomically(out / TABLE, (text + "\n").encode("utf-8"))
    return text
