"""A run of a composed config: planned (lmzoo.training.plan: every check before anything is written), built,
trained, ended with its summary, and sampled."""

import sys
from collections.abc import Callable

import lightning as L
import torch
from omegaconf import DictConfig

from lmzoo.checkpoints.load import load_model
from lmzoo.errors import UserError
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.training.acceleration import say
from lmzoo.training.datamodule import TaskDataModule, TokenDataModule
from lmzoo.training.ending import run_summary, save_last_step, test_of_best, usable_best
from lmzoo.training.module import LitLM
from lmzoo.training.plan import RunPlan, Start, plan_run
from lmzoo.training.provenance import provenance, write_provenance
from lmzoo.training.trainer import build_trainer, log_each_line_once


def build(cfg: DictConfig, callbacks: tuple = ()) -> tuple[TokenDataModule | TaskDataModule, LitLM, L.Trainer]:
    """The datamodule (prepared), the model wrapped for training (compiled with compile=true), and the Trainer a
    config describes, with `callbacks` added to its own; checked to resume the checkpoint it names, if any."""
    plan, start = plan_run(cfg)
    lit, trainer = assemble(plan, start, callbacks)
    return start.datamodule, lit, trainer


def assemble(plan: RunPlan, start: Start, callbacks: tuple = ()) -> tuple[LitLM, L.Trainer]:
    """The model wrapped for training and the Trainer of `plan`."""
    skip_nonfinite = plan.config.trainer.get("skip_nonfinite", False)
    lit = LitLM(start.model, plan.optim, start.datamodule.tokenizer, start.datamodule.val_tokens_per_byte,
                skip_nonfinite=skip_nonfinite, finetune=start.finetune, provenance=provenance(plan.recorded_config()),
                flops_per_token=plan.flops_per_token, scores_answers=start.datamodule.scores_answers)
    if plan.settings.compile is True:
        # Compiles the model's forward in place, so checkpoints keep their plain parameter names.
        start.model.compile()
    trainer = build_trainer(plan, callbacks)
    if plan.length.said:
        say(trainer, plan.length.said)
    say(trainer, f"precision: {plan.precision.value} ({plan.precision.reason})")
    return lit, trainer


def train(cfg: DictConfig, callbacks: tuple = (), accepted: Callable[[], None] | None = None,
          report_test: bool = True) -> dict:
    """Train as configured, with `callbacks` beside the config's; return the best checkpoint path and validation
    loss. `accepted` is called once every check has passed, before the run writes anything (the command's record
    of itself, lmzoo.cli.folders.write_command_record). Once training has ended, the best checkpoint's test metrics
    go into summary.json, unless not `report_test` (a tune's trial, which nothing may report)."""
    log_each_line_once()
    plan, start = plan_run(cfg)
    if plan.resume.ended:
        print(plan.resume.ended.line(), file=sys.stderr)
        return plan.resume.ended.result()
    lit, trainer = assemble(plan, start, callbacks)
    if trainer.is_global_zero:
        if accepted:
            accepted()
        write_provenance(lit.provenance, plan.output_dir)
    # Our checkpoints hold RNG states (numpy, Python), which torch's weights-only loading refuses.
    trainer.fit(lit, datamodule=start.datamodule, ckpt_path=plan.resume.checkpoint, weights_only=False)
    save_last_step(trainer, lit)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    result = {"best_checkpoint": best, "best_val_loss": lit.best_val_loss, "best_val_accuracy": lit.best_val_accuracy,
              "steps": trainer.global_step}
    if trainer.is_global_zero:
        test = test_of_best(trainer, start.datamodule) if report_test else {}
        run_summary(lit, trainer, plan.command.model, plan.settings.seed, plan.tuned, test).write(plan.output_dir)
    if lit.diverged_at is not None:
        raise UserError(f"the run diverged at step {lit.diverged_at}: val/loss is NaN or inf ({usable_best(trainer)}); "
                        "train again with a lower optim.lr")
    if best and plan.settings.sample_tokens > 0 and trainer.is_global_zero:
        model, tokenizer, _ = load_model(best)
        settings = SamplingSettings(max_new_tokens=plan.settings.sample_tokens)
        text = sample_text(model, tokenizer, "", settings, torch.Generator().manual_seed(plan.settings.seed))
        print(f"\nSample from {best}:\n{text}\n")
    return result
