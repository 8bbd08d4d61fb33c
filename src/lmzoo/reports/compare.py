"""The comparison table of a sweep: one row per run, from the summary.json each run writes when it ends."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmzoo.errors import UserError
from lmzoo.files import write_atomically

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
    Column("FLOPs", "flops", lambda v: f"{v:.3g}"),
    Column("MFU", "mfu", lambda v: f"{100 * v:.1f}%"),
    Column("wall time", "wall_time_s", lambda v: f"{v:.1f} s"),
    Column("status", "status"),
    Column("run", "run"),
]


def write_summary(run_dir: str | Path, record: dict) -> None:
    payload = json.dumps({"run": Path(run_dir).name, **record}, indent=2) + "\n"
    write_atomically(Path(run_dir) / SUMMARY, payload.encode("utf-8"))


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those Hydra wrote a .hydra/ into), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() or (p / SUMMARY).is_file()]
    return sorted(jobs, key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else math.inf,
                                       p.name))


def read_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in job_dirs(sweep_dir):
        path = job / SUMMARY
        rows.append(read_summary(path) if path.is_file() else {"run": job.name, "status": "no summary (running, or killed)"})
    return rows


def read_summary(path: Path) -> dict:
    """A run's summary.json; one that is not what lmzoo writes is a UserError naming the file."""
    fix = "delete it (the run's row then says 'no summary') or train the run again"
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {fix}") from None
    if not isinstance(row, dict):
        raise UserError(f"{path} holds {type(row).__name__}, not a run's summary; {fix}")
    for column in COLUMNS:
        try:
            if row.get(column.key) is not None:
                column.format(row[column.key])
        except (TypeError, ValueError):
            raise UserError(f"{path} has a {column.key} of {row[column.key]!r}, which is not a value of that "
                            f"column; {fix}") from None
    return row


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
    write_atomically(sweep_dir / TABLE, (text + "\n").encode("utf-8"))
    return text
