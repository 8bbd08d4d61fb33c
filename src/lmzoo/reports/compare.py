"""The comparison of a sweep, from the summary.json each run writes when it ends (and its provenance.json).

Two tables: one row per setting (runs pooled over seeds, see lmzoo.reports.runs), ranked by mean test/bpb (the
test split's bits per byte of each run's best-validation checkpoint; best val/bpb for runs of older releases,
which have none; test/accuracy, highest first, on a synthetic task: a table per task, each by its own metric, and
each model's rank in every task side by side), each with Welch's t-test against the best (Holm-corrected when
several settings are tested against it), and where a model ran at its tuned value and beside it (train's
tuned_at), where its best lies; then one row per run, in job order.
"""

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.reports.runs import RunFolder, Setting, label, pool, read_run
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


def kilobytes(value) -> str:
    return f"{value / 1024:,.1f} KiB"


RUN_COLUMNS = [
    Column("model", "setting"),
    Column("seed", "seed"),
    Column("data seed", "data_seed"),
    Column("parameters", "parameters", thousands),
    Column("active parameters", "active_parameters", thousands),
    Column("best val/loss", "best_val_loss", loss),
    Column("best val/bpb", "best_val_bpb", loss),
    Column("best val/accuracy", "best_val_accuracy", loss),
    Column("test/loss", "test_loss", loss),
    Column("test/bpb", "test_bpb", loss),
    Column("test/accuracy", "test_accuracy", loss),
    Column("state", "state_bytes", kilobytes),
    Column("steps", "steps", thousands),
    Column("FLOPs", "flops", flops),
    Column("tokens/s", "tokens_per_sec", thousands),
    Column("MFU", "mfu", percent),
    Column("wall time", "wall_time_s", seconds),
    Column("status", "status"),
    Column("run", "run"),
]
# Columns shown only where a run has a value: runs of a synthetic task, and of lmzoo 0.3 and later.
WHERE_RECORDED = ("best_val_accuracy", "test_accuracy", "state_bytes")


def recorded(columns: list[Column], runs: list[RunFolder]) -> list[Column]:
    """`columns` without those of WHERE_RECORDED that none of `runs` has a value for."""
    return [c for c in columns if c.key not in WHERE_RECORDED or any(run.value(c.key) is not None for run in runs)]


# Per setting, after its rank, n, metrics and test: the mean over its runs.
MEAN_COLUMNS = [Column("state", "state_bytes", kilobytes), Column("parameters", "parameters", thousands),
                Column("FLOPs", "flops", flops),
                Column("wall time", "wall_time_s", seconds), Column("tokens/s", "tokens_per_sec", thousands),
                Column("MFU", "mfu", percent)]
# The published table (compare --published), as README.md and bench/README.md show it: after rank, model, tuned
# values and n, the steps (median over the runs), the ranking metric, its test against the best, and the wall time.
PUBLISHED_COLUMNS = [Column("steps", "median_steps", thousands), Column("METRIC", "metric"),
                     Column("vs best", "test"), Column("median wall time", "median_wall_time_s", seconds),
                     Column("mean wall time", "wall_time_s", seconds)]


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


# The metric a comparison ranks by: the first that every finished run has. The test split's reports what selection
# (the tune's, early stopping's, the checkpoint's, all by validation) never read; a synthetic task's runs rank by
# accuracy; bits per byte compare across tokenizers. Runs of older releases have no test metrics.
RANKING_KEYS = ("test_accuracy", "best_val_accuracy", "test_bpb", "test_loss", "best_val_bpb")


def ranking_key(settings: list[Setting]) -> str:
    """The first of RANKING_KEYS every finished run has; else best_val_loss."""
    finished = [run for s in settings for run in s.runs if run.value("best_val_loss") is not None]
    for key in RANKING_KEYS:
        if finished and all(run.value(key) is not None for run in finished):
            return key
    return "best_val_loss"


# What a run's data.* keys say about how it trained rather than about its task.
TRAINING_DATA_KEYS = ("data.seed", "data.batch_size", "data.num_workers", "data.train_examples")


def task_of(config: dict | None) -> dict:
    """A setting's task: its data settings and length, those that say how it trained left out."""
    return {key: value for key, value in (config or {}).items()
            if (key.startswith("data.") and key not in TRAINING_DATA_KEYS) or key == "block_size"}


def tasks(settings: list[Setting]) -> dict[str, list[Setting]]:
    """The settings by task, each named by its data and the keys in which the tasks differ:
    `mqar (block_size=64, data.num_kv_pairs=4)`; one task, or settings without a config, named ''."""
    found = {}
    for setting in settings:
        found.setdefault(json.dumps(task_of(setting.config), sort_keys=True, default=str), []).append(setting)
    if len(found) < 2:
        return {"": settings}
    described = [task_of(group[0].config) for group in found.values()]
    differing = sorted(key for key in set().union(*described) if len({json.dumps(d.get(key), default=str)
                                                                        for d in described}) > 1)
    named = {}
    for task, group in zip(described, found.values()):
        # A key of another task's data only (text has no num_kv_pairs) goes without saying.
        shown_keys = ", ".join(f"{key}={task[key]}" for key in differing if key != "data.name" and key in task)
        named[f"{task.get('data.name')} ({shown_keys})" if shown_keys else str(task.get("data.name"))] = group
    return named


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


# What each ranking key ranks by, and whether higher is better.
METRICS = {"test_accuracy": ("test/accuracy", True), "best_val_accuracy": ("best val/accuracy", True),
           "test_bpb": ("test/bpb", False), "test_loss": ("test/loss", False), "best_val_bpb": ("best val/bpb", False),
           "best_val_loss": ("best val/loss", False)}


def ranked_groups(settings: list[Setting]) -> dict[str, tuple[list[Setting], str]]:
    """The settings by the table that ranks them and the metric it ranks by: one table where every
    task ranks by the same loss or bits per byte (bits per byte compare across tokenizers); else a table per task,
    each by its own metric (accuracy on a synthetic task, bits per byte on text)."""
    by_task = tasks(settings)
    keys = {task: ranking_key(group) for task, group in by_task.items()}
    if len(set(keys.values())) == 1 and not METRICS[next(iter(keys.values()))][1]:
        by_task = {"": settings}
        keys = {"": ranking_key(settings)}
    return {task: (group, keys[task]) for task, group in by_task.items()}


def ranking_note(key: str, tested: list[int], settings: list[Setting]) -> str:
    """The sentence before a ranking by `key`: its metric, its test, the seeds averaged over."""
    metric, higher = METRICS[key]
    counted = f"the {tested[0]} " if len(tested) == 1 else "the "
    holm_note = (f", its p-values Holm-corrected for {counted}settings tested against rank 1" if max(tested) > 1
                 else "")
    order = ", highest first" if higher else ""
    return (f"Ranked by mean {metric} over seeds{order} (mean ± standard deviation, n runs){test_note(key)}; vs best: "
            f"Welch's t-test of {metric} against rank 1{holm_note}, significant when p < {SIGNIFICANCE}. "
            f"{seeds_note(settings)}")


def setting_table(settings: list[Setting], names: dict[int, str], published: bool = False) -> str:
    """One row per setting with a result, best first, a table per task where tasks rank by accuracy or by different
    metrics (then each model's best per task side by side); `published`: in PUBLISHED_COLUMNS."""
    every = ranked_groups(settings)
    left_out = "".join(unranked(group, key, names) for group, key in every.values())
    groups = {task: ([s for s in group if s.values(key)], key) for task, (group, key) in every.items()}
    groups = {task: (group, key) for task, (group, key) in groups.items() if group}
    if not groups:
        return "No run has finished yet." + left_out
    ranked = [s for group, _ in groups.values() for s in group]
    keys = [key for _, key in groups.values()]
    tables, tested = [], []
    for task, (group, key) in groups.items():
        text, count = ranked_table(group, key, ranked, published)
        by = f", by {METRICS[key][0]}" if len(set(keys)) > 1 else ""
        tables.append(f"{task}{by}:\n\n{text}" if task else text)
        tested.append(count)
    # A sentence per metric, naming its tasks where the tasks rank by different metrics.
    lead = " ".join(
        (f"{', '.join(task for task, (_, k) in groups.items() if k == key)}: " if len(set(keys)) > 1 else "")
        + ranking_note(key, [count for k, count in zip(keys, tested) if k == key],
                       [s for group, k in groups.values() if k == key for s in group])
        for key in dict.fromkeys(keys)) + (" A table per task." if len(groups) > 1 else "")
    notes = "".join(incomparable(group, key) + brackets(
        sorted(group, key=lambda s: statistics.fmean(s.values(key)), reverse=METRICS[key][1]), key)
        for group, key in (groups.values() if len(set(keys)) > 1 else [(ranked, keys[0])]))
    return (lead + "\n\n" + "\n\n".join(tables) + across_tasks(groups) + left_out + notes)


def validation_key(key: str) -> str:
    """The validation metric that chooses among a model's settings reported by `key`."""
    if METRICS[key][1]:
        return "best_val_accuracy"
    return "best_val_bpb" if key in ("test_bpb", "best_val_bpb") else "best_val_loss"


def across_tasks(groups: dict[str, tuple[list[Setting], str]]) -> str:
    """Where several tasks are ranked, a table of each model's rank in each: its best setting there (chosen by
    validation, as a tune chooses; reported by the task's ranking metric), ranked among the models'."""
    if len(groups) < 2:
        return ""
    models = list(dict.fromkeys(s.model or s.label for group, _ in groups.values() for s in group))
    rows = {model: {"model": model} for model in models}
    columns = [Column("model", "model")]
    for index, (task, (group, key)) in enumerate(groups.items()):
        metric, higher = METRICS[key]
        chooser = validation_key(key)
        best = {}
        for setting in group:
            chosen = setting.values(chooser) or setting.values(key)
            score = statistics.fmean(chosen) if METRICS[chooser][1] else -statistics.fmean(chosen)
            model = setting.model or setting.label
            if model not in best or score > best[model][0]:
                best[model] = (score, setting)
        reported = sorted(((statistics.fmean(setting.values(key)), model) for model, (_, setting) in best.items()),
                          key=lambda r: r[0], reverse=higher)
        for rank, (value, model) in enumerate(reported, 1):
            rows[model][f"task{index}"] = f"{rank} ({value:.4f})"
        columns.append(Column(f"{task} {metric}", f"task{index}"))
    return ("\n\nEach model across the tasks: its rank and mean in each, at its best setting there (chosen by "
            "validation: best val/accuracy, else best val/bpb or val/loss; reported by the task's ranking metric); "
            "'-' where it did not run:\n\n" + table(list(rows.values()), columns))


def ranked_table(settings: list[Setting], key: str, everything: list[Setting],
                 published: bool = False) -> tuple[str, int]:
    """The table of settings that all have `key`, best first, and how many were tested against the best; settings
    of one task among `everything` are labelled among themselves; `published`: in PUBLISHED_COLUMNS."""
    metric, higher = METRICS[key]
    ranked = sorted(settings, key=lambda s: statistics.fmean(s.values(key)), reverse=higher)
    metrics = [Column("best val/bpb", "bpb"), Column("best val/loss", "loss")]
    if higher:
        metrics = [Column("best val/accuracy", "accuracy"), metrics[1]]
    if key.startswith("test"):
        metrics.insert(0, Column(metric, "metric"))
    columns = [Column("rank", "rank"), Column("model", "label"), Column("n", "n"), *(
        [replace(c, header=metric) if c.header == "METRIC" else c for c in PUBLISHED_COLUMNS] if published
        else [*metrics, Column("vs best", "test"),
              *recorded(MEAN_COLUMNS, [run for setting in settings for run in setting.runs])])]
    if any(tuned(setting) for setting in ranked):
        columns.insert(2, Column("tuned", "tuned"))
    tests = ["best", *significance([welch_p(s.values(key), ranked[0].values(key)) for s in ranked[1:]])]
    rows = []
    for rank, (setting, test) in enumerate(zip(ranked, tests), 1):
        n, total = len(setting.values(key)), len(setting.runs)
        # Within a task's table, named by what tells its settings apart (the task's own keys go without saying).
        name = setting.label if len(settings) == len(everything) else label(setting, settings)
        row = {"rank": rank, "label": name, "n": f"{n}" if n == total else f"{n} of {total}",
               "bpb": mean_sd(setting.values("best_val_bpb")), "loss": mean_sd(setting.values("best_val_loss")),
               "accuracy": mean_sd(setting.values("best_val_accuracy")), "test": test, "tuned": tuned(setting),
               "metric": mean_sd(setting.values(key)), "median_steps": median(setting.values("steps")),
               "median_wall_time_s": median(setting.values("wall_time_s"))}
        for column in MEAN_COLUMNS:
            values = setting.values(column.key)
            row[column.key] = statistics.fmean(values) if values else None
        rows.append(row)
    return table(rows, columns), sum(test.startswith("p = ") for test in tests)


def brackets(ranked: list[Setting], key: str) -> str:
    """For each model run at its tuned value and at a searched value beside it (tuned_at=lower, upper), settings
    alike but for that, where its best lies: between the two (the optimum is bracketed at this budget) or at one."""
    metric, higher = METRICS[key]
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
        best = (max if higher else min)(means, key=means.get)
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
    return (f"\n\nWhere the best lies, by mean {metric} at the tuned value and at the searched values beside "
            "the best (tuned_at):\n\n" + "\n".join(f"- {line}" for line in lines))


def median(values: list) -> float | None:
    return statistics.median(values) if values else None


def test_note(key: str) -> str:
    """What the ranking metric is: the test split's, measured where validation chose nothing, or validation's."""
    if key.startswith("test"):
        return (": the test split's, of each run's best-validation checkpoint, measured once when the run ended; "
                "validation chose the checkpoint and any tuned value, the test split nothing")
    return ": validation's, which also chose each run's checkpoint (some runs have no test metric)"


# What says which text a run trained on; the data's name and tokenizer say how it was cut into tokens.
DATA_TEXT_KEYS = ("path", "url", "sha256", "dataset", "val_path", "train_fraction", "test_fraction")


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
    if key in ("best_val_loss", "test_loss") and len(tokenizers) > 1:
        return ("\n\nWarning: ranked by loss across tokenizers, which does not compare (a token is not the "
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
    return (f"{setting_table(settings, names)}\n\nRuns:\n\n"
            f"{table(run_rows(runs, settings, names), recorded(RUN_COLUMNS, runs))}")


def published_table(sweep_dirs: list[str | Path]) -> str:
    """The settings of several sweeps' runs ranked as the README publishes them (PUBLISHED_COLUMNS)."""
    runs = read_sweeps(sweep_dirs)
    return setting_table(pool(runs), run_names(runs), published=True)


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
