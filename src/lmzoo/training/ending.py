"""How a run ends: last.ckpt at its last step however it stopped, the line that says why it stopped early or
diverged, and its summary.json row."""

import math
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from lmzoo.checkpoints.load import load_model
from lmzoo.inference.evaluation import bits_per_byte
from lmzoo.training.callbacks import TokensPerSecond
from lmzoo.training.datamodule import TokenDataModule
from lmzoo.training.module import LitLM
from lmzoo.training.summary import RunSummary


def save_last_step(trainer: L.Trainer, lit: LitLM) -> None:
    """last.ckpt at the step the run ended, as its summary reports it, however it stopped (early stopping, a
    minutes budget between validations); say so when early stopping ended it."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint and checkpoint.save_last and lit.saved_step != trainer.global_step and trainer.global_step:
        trainer.save_checkpoint(Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")
    stopper = early_stopper(trainer)
    if trainer.is_global_zero and stopper:
        print(f"stopped early at step {trainer.global_step} of {trainer.max_steps}: {why_stopped(stopper)}; the best "
              f"model is in {checkpoint and checkpoint.best_model_path}", file=sys.stderr)


def usable_best(trainer: L.Trainer) -> str:
    """Whether a diverged run's best checkpoint was saved before the divergence (Lightning scores NaN as inf)."""
    checkpoint = trainer.checkpoint_callback
    score = checkpoint and checkpoint.best_model_score
    if score is not None and torch.isfinite(score):
        return f"{checkpoint.best_model_path}, saved before, is intact"
    return "no checkpoint was saved before it"


# The reasons Lightning's EarlyStopping gives for ending a run early, with the setting of each threshold.
STOP_REASONS = {EarlyStoppingReason.PATIENCE_EXHAUSTED: "patience",
                EarlyStoppingReason.STOPPING_THRESHOLD: "stopping_threshold",
                EarlyStoppingReason.DIVERGENCE_THRESHOLD: "divergence_threshold"}


def early_stopper(trainer: L.Trainer) -> EarlyStopping | None:
    """The EarlyStopping callback, if it ended the run: its monitor stopped improving, or crossed one of its
    thresholds (a non-finite one is the run's divergence, which the summary reports as such)."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    return stopper if stopper and stopper.stopping_reason in STOP_REASONS else None


def why_stopped(stopper: EarlyStopping) -> str:
    """What ended the run early, with the setting that decided it."""
    reason = stopper.stopping_reason
    if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return (f"{stopper.monitor} did not improve in {stopper.patience} validations "
                "(callbacks.early_stopping.patience)")
    knob = STOP_REASONS[reason]
    return f"{stopper.monitor} reached {getattr(stopper, knob):g} (callbacks.early_stopping.{knob})"


def test_of_best(trainer: L.Trainer, datamodule: TokenDataModule) -> dict:
    """The test split's metrics of the run's best-validation checkpoint, in the precision the run validated in
    (bf16 autocast in a bf16-mixed run: half the time of fp32 on a CPU with bf16 units, and measured as the
    validation that chose the checkpoint is): none without one, or where its validation loss was NaN or inf
    (Lightning scores NaN as inf), a diverged run's whose weights are not numbers."""
    checkpoint = trainer.checkpoint_callback
    score = checkpoint and checkpoint.best_model_score
    if not (checkpoint and checkpoint.best_model_path) or (score is not None and not torch.isfinite(score)):
        return {}
    model, _, _ = load_model(checkpoint.best_model_path)
    with trainer.precision_plugin.val_step_context():
        return datamodule.test_result(model)


def run_summary(lit: LitLM, trainer: L.Trainer, model: str | None, seed: int, tuned: dict | None = None,
                test: dict | None = None) -> RunSummary:
    """The run's row in a sweep's comparison table (see lmzoo.reports.compare), over all of its segments
    when it was resumed: tokens, tokens/s, MFU and wall time are carried in its checkpoints. `model`: its model=
    option (the model's class name without one); `test`: test_of_best's."""
    total, active = lit.model.parameter_counts()
    throughput = next((c for c in trainer.callbacks if isinstance(c, TokensPerSecond)), None)
    tokens = throughput and throughput.tokens
    best = None if math.isinf(lit.best_val_loss) else lit.best_val_loss
    # Bits per byte put models with different tokenizers on one scale.
    best_bpb = bits_per_byte(best, lit.val_tokens_per_byte) if best is not None and lit.val_tokens_per_byte else None
    return RunSummary(
        model=model or type(lit.model).__name__,
        parameters=total,
        active_parameters=active,
        best_val_loss=best,
        best_val_bpb=best_bpb,
        best_val_accuracy=lit.best_val_accuracy,
        state_bytes=lit.state_bytes,
        **(test or {}),
        steps=trainer.global_step,
        tokens_per_sec=throughput and throughput.mean_rate,
        wall_time_s=lit.wall_time_s,
        status=RunSummary.ended(trainer.global_step, lit.diverged_at, trainer.interrupted, early_stopper(trainer) is not None),
        flops_per_token=lit.flops_per_token,
        tokens=tokens,
        flops=tokens and tokens * lit.flops_per_token,
        mfu=throughput and throughput.mfu,
        seed=seed,
        tuned=tuned,
    )
