"""A run's summary.json: written by the run when it ends (or by the sweep when a job fails), read by `compare`,
`scaling`, `plot` and by a later run that continues it. Imports no Lightning, so the reports read it without."""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lmzoo.errors import UserError
from lmzoo.files import write_atomically

SUMMARY = "summary.json"
# The keys of a summary that hold text; the others hold numbers (and tuned, a mapping).
TEXT_KEYS = ("run", "model", "status")


@dataclass(kw_only=True)
class RunSummary:
    """A run's summary.json: its row in the comparison's tables. None where a run has no value, as a failed run's
    losses; a run of an older release lacks the newer keys (None)."""

    run: str | None = None
    model: str | None = None
    parameters: int | None = None
    active_parameters: int | None = None
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    # The test split's, of the best-validation checkpoint, measured once when the run ended (a tune's trials skip it).
    test_loss: float | None = None
    test_bpb: float | None = None
    # A synthetic task's test accuracy, of the same checkpoint.
    test_accuracy: float | None = None
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

    @property
    def done(self) -> bool:
        """Whether the run ended as it was asked to: at its last step, or stopped early."""
        return bool(self.status and self.status.startswith("done"))

    @property
    def stopped_early(self) -> bool:
        return bool(self.status and self.status.startswith("done: stopped early"))

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
