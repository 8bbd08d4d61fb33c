"""The Hydra callback of sweeps (`python -m lmzoo.train -m ...`): after every job, failed ones included,
the comparison of the sweep so far, written to SWEEP_DIR/comparison.md and printed, and SWEEP_DIR/report.md."""

from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lmzoo.cli.compat import job_error
from lmzoo.cli.folders import RECORD, write_command_record
from lmzoo.reports.compare import TABLE
from lmzoo.reports.report import write_report
from lmzoo.training.summary import SUMMARY, RunSummary


def failure(job_return: JobReturn) -> str:
    """'failed: ' and the first line of the error at the root of a failed job (under Hydra's wrapping)."""
    # The sweep raises it once every job has run.
    error = job_error(job_return)
    while error.__cause__ is not None:
        error = error.__cause__
    return f"failed: {type(error).__name__}: {error}".splitlines()[0]


class SweepComparison(Callback):
    """After each sweep job, records a failed job's error as its summary (and the job's command, which a job
    refused before it ran has not recorded: its row is labelled by its config), prints the updated comparison and
    writes the report."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and not (run_dir / SUMMARY).is_file():
            RunSummary(model=config.hydra.runtime.choices.get("model"), status=failure(job_return)).write(run_dir)
            if not (run_dir / RECORD).is_dir():
                write_command_record(job_return.cfg)
        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\nComparison so far ({sweep_dir / TABLE}):\n{write_report(sweep_dir)}\n")
