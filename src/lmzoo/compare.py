"""python -m lmzoo.compare SWEEP_DIR: one row per run of a sweep, from the summary.json each run writes.

During a sweep (`python -m lmzoo.train -m ...`), the Hydra callback `SweepComparison` rebuilds the
table after every job, failed ones included, writes it to SWEEP_DIR/comparison.md and prints it.
"""

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lmzoo.errors import UserError, report_user_errors

SUMMARY = "summary.json"
TABLE = "comparison.md"


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    format: Callable[[object], str] = str


def thousands(value) -> str:
    return f"{value:,}"


def loss(value) -> str:
    return "-" if value is None or math.isinf(value) else f"{value:.4f}"


COLUMNS = [
    Column("model", "model"),
    Column("parameters", "parameters", thousands),
    Column("active parameters", "active_parameters", thousands),
    Column("best val/loss", "best_val_loss", loss),
    Column("best val/bpb", "best_val_bpb", loss),
    Column("steps", "steps", thousands),
    Column("tokens/s", "tokens_per_sec", lambda v: f"{v:,.0f}"),
    Column("wall time", "wall_time_s", lambda v: f"{v:.1f} s"),
    Column("status", "status"),
    Column("run", "run"),
]


def write_summary(run_dir: str | Path, record: dict) -> None:
    path = Path(run_dir) / SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": Path(run_dir).name, **record}, indent=2) + "\n")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those Hydra wrote a .hydra/ into), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() or (p / SUMMARY).is_file()]
    return sorted(jobs, key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else math.inf,
                                       p.name))


def read_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in job_dirs(sweep_dir):
        path = job / SUMMARY
        rows.append(json.loads(path.read_text()) if path.is_file()
                    else {"run": job.name, "status": "no summary (running, or killed)"})
    return rows


def table(rows: list[dict], columns: list[Column] = COLUMNS) -> str:
    """A Markdown table; a value a row lacks (a failed run's metrics) shows as '-'."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = ["-" if row.get(c.key) is None else c.format(row[c.key]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(sweep_dir: str | Path) -> str:
    """Write SWEEP_DIR/comparison.md from the runs' summaries, and return the table."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{str(sweep_dir)!r} is not a folder; pass a sweep folder such as outputs/sweeps/DATE_TIME")
    rows = read_rows(sweep_dir)
    if not rows:
        raise UserError(f"no runs in {sweep_dir}; pass the folder a sweep (python -m lmzoo.train -m ...) wrote")
    text = table(rows)
    (sweep_dir / TABLE).write_text(text + "\n")
    return text


def failure(job_return: JobReturn) -> str:
    """'failed: ' and the first line of the error at the root of a failed job (under Hydra's wrapping)."""
    # The public return_value re-raises the job's exception; the sweep raises it once every job has run.
    error = job_return._return_value
    while error.__cause__ is not None:
        error = error.__cause__
    return f"failed: {type(error).__name__}: {error}".splitlines()[0]


class SweepComparison(Callback):
    """After each sweep job, records a failed job's error as its summary and prints the updated table."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and not (run_dir / SUMMARY).is_file():
            write_summary(run_dir, {"status": failure(job_return)})
        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\nComparison so far ({sweep_dir / TABLE}):\n{compare(sweep_dir)}\n")


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m lmzoo.compare SWEEP_DIR")
    print(compare(args[0]))


if __name__ == "__main__":
    main()
