"""Whether a run continues a checkpoint, which, and whether it may: a checkpoint of the model the run builds, on
the same tokenizer; a run that has ended is left as it is unless the continuation trains it further."""

import dataclasses
import math
import sys
from pathlib import Path

from omegaconf import DictConfig

from lmzoo.checkpoints.ckpt import checkpoint_file, read_checkpoint
from lmzoo.checkpoints.integrity import NonFiniteWeights
from lmzoo.checkpoints.folder import is_lmzoo_folder
from lmzoo.checkpoints.hf import is_hf_source
from lmzoo.checkpoints.record import ModelRecord, architecture_record
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel
from lmzoo.models.presets import flat, override_value
from lmzoo.training.budget import Budget
from lmzoo.training.finetune import model_option, source_path
from lmzoo.training.folder import checkpoints_folder, is_own_checkpoint
from lmzoo.training.optim import OptimConfig
from lmzoo.training.summary import SUMMARY, RunSummary

# The checkpoint a run folder's last step is in (Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST, conf/callbacks).
LAST = "last.ckpt"


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: ckpt_path, or with resume=auto the run folder's last.ckpt."""
    if cfg.ckpt_path:
        source = str(cfg.ckpt_path)
        # An exported folder or a Hub model holds weights only: no optimizer, schedule or step to continue.
        if is_hf_source(source) or is_lmzoo_folder(source):
            raise UserError(f"ckpt_path={source} holds a model's weights, not a training run's state to continue; "
                            f"start a run from them with init_from={source}")
        return str(checkpoint_file(source, takes="a .ckpt file from a run's checkpoints/ (or resume=auto)"))
    if cfg.resume == "auto":
        last = checkpoints_folder(cfg) / LAST
        return str(last) if last.is_file() else None
    return None


def as_list(value):
    """Tuples as lists: a config read from a checkpoint and one from the command line hold sequences either way."""
    return list(value) if isinstance(value, tuple) else value


def check_same_start(record: ModelRecord, ckpt_path: str, init_from: str | None, finetune: dict | None) -> None:
    """init_from beside a checkpoint to resume is used, or refused, never silently dropped: a LoRA run rebuilds its
    frozen base from it (which must be the base it trained on, moved or not); a run fully fine-tuned from it
    continues from the checkpoint's weights, which the command says where init_from names other weights."""
    if not init_from:
        return
    started = ((record.run or {}).get("config") or {}).get("init_from") or (record.finetune or {}).get("base")
    if not started:
        raise UserError(f"{ckpt_path} continues a run trained from scratch, whose weights replace init_from's; leave "
                        f"init_from={init_from} out")
    recorded = (record.finetune or {}).get("base_sha256")
    if recorded and finetune and finetune.get("base_sha256") != recorded:
        raise UserError(f"init_from={init_from} is not the base {ckpt_path} was trained on ({started}: the sha256 of "
                        "their weights differs); pass that base as init_from")
    if not record.finetune and source_path(started) != source_path(init_from):
        print(f"warning: {ckpt_path} continues a run fine-tuned from {started}: its own weights go on, not those of "
              f"init_from={init_from}", file=sys.stderr)


def read_to_continue(ckpt_path: str, checkpoints: Path | None) -> dict:
    """The checkpoint `ckpt_path`, read to continue its run. One of the run folder's own `checkpoints` holding
    non-finite weights (its run diverged) is refused naming another of them that is finite, or saying that none is."""
    try:
        return read_checkpoint(ckpt_path)
    except NonFiniteWeights as error:
        if checkpoints is None or not is_own_checkpoint(ckpt_path, checkpoints):
            raise
        path = Path(ckpt_path).expanduser().resolve()
        finite = next((other for other in sorted(checkpoints.glob("*.ckpt"))
                       if other.resolve() != path and is_finite(other)), None)
        what = f"{ckpt_path} holds non-finite weights (NaN or inf in {error.first}): the run diverged"
        fix = "train again in a new folder (hydra.run.dir=PATH) with a lower optim.lr"
        if finite is None:
            raise UserError(f"{what}, and no checkpoint of the run holds finite weights; {fix}") from None
        raise UserError(f"{what}; {fix}, or start one from the finite weights of {finite} with init_from={finite}") \
            from None


def is_finite(path: Path) -> bool:
    """Whether the checkpoint `path` is readable and holds finite weights."""
    try:
        read_checkpoint(path)
    except UserError:
        return False
    return True


def check_resumable(ckpt_path: str, model: LanguageModel, tokenizer: dict, optim: OptimConfig,
                    finetune: dict | None = None, init_from: str | None = None,
                    checkpoints: Path | None = None) -> str | None:
    """A sound lmzoo checkpoint of this release, of the `model` the run builds (with its `finetune` record),
    trained on tokens of the data's `tokenizer`. Returns the warning that names the optimizer settings that differ
    from the checkpoint's (the checkpoint's optimizer and learning-rate schedule are the ones that continue), or
    None. `checkpoints`: the run folder's checkpoints/ (read_to_continue)."""
    record = ModelRecord.read(read_to_continue(ckpt_path, checkpoints)["lmzoo"])
    check_same_start(record, ckpt_path, init_from, finetune)
    if record.tokenizer != tokenizer:
        raise UserError(f"{ckpt_path} was trained with the {describe_tokenizer(record.tokenizer)}, but the data uses "
                        f"the {describe_tokenizer(tokenizer)}; resume with the data=/tokenizer= of that run")
    ours = architecture_record(model)
    # Dropout and the init do not change the weights a run continues from: a resumed run may change them.
    recorded, built = flat(record.config), flat(ours["config"])
    changed = {key: value for key, value in recorded.items()
               if key not in ("dropout", "init") and as_list(built.get(key)) != as_list(value)}
    if record.architecture != ours["architecture"] or set(changed) & set(model.config.choice_values()):
        config = record.build_config()
        raise UserError(f"{ckpt_path} holds a model={model_option(config)} model, not what model= builds; resume "
                        f"with model={model_option(config)} and that run's model settings")
    if changed:
        settings = " ".join(f"model.{key}={override_value(value)}" for key, value in changed.items())
        raise UserError(f"{ckpt_path} holds a model of other settings than the run builds; resume with {settings}")
    asked = vars(optim)
    kept = {key: value for key, value in (record.optim or {}).items() if asked.get(key) != value}
    if not kept:
        return None
    theirs = ", ".join(f"{key}={value}" for key, value in kept.items())
    ours_now = ", ".join(f"optim.{key}={asked[key]}" for key in kept)
    decay = (" (optim.decay_steps follows trainer.max_steps: steps past the checkpoint's decay run at "
             "the schedule's floor)") if "decay_steps" in kept else ""
    return (f"warning: resuming keeps the checkpoint's optimizer and learning-rate schedule ({theirs}), not this "
            f"command's {ours_now}{decay}")


@dataclasses.dataclass(frozen=True)
class EndedRun:
    """A run that has ended in its folder, which this command leaves as it is: its step, status and results."""

    folder: Path
    step: int
    status: str
    best_checkpoint: str
    best_val_loss: float
    best_val_accuracy: float | None
    # The setting that would train it further (Budget.to_train_further).
    further: str

    def line(self) -> str:
        further = "" if self.status.startswith("done: stopped early") else \
            f"; to train it further, continue it with {self.further}"
        return (f"{self.folder} already ended at step {self.step} ({self.status}); it is left as it is, its summary in "
                f"{self.folder / SUMMARY}{further}")

    def result(self) -> dict:
        return {"best_checkpoint": self.best_checkpoint, "best_val_loss": self.best_val_loss,
                "best_val_accuracy": self.best_val_accuracy, "steps": self.step}


def ended_run(folder: Path, checkpoints: Path, ckpt_path: str | None, max_steps: int, best: Path,
              budget: Budget) -> EndedRun | None:
    """The run in `folder` when it has ended (its summary says done, at the step of its last.ckpt) and continuing
    it from `ckpt_path`, one of its own checkpoints, up to `max_steps` would train it no further (or it stopped
    early); None when there is a run to continue. An ended run is left as it is, so that its checkpoints, summary,
    provenance and logs keep describing the run that trained (a sweep continued with resume=auto passes over its
    finished jobs). `best`: where the run's best checkpoint is; `budget`: the command's, which says how to train
    it further."""
    summary_path, last = folder / SUMMARY, checkpoints / LAST
    if not is_own_checkpoint(ckpt_path, checkpoints) or not summary_path.is_file() or not last.is_file():
        return None
    summary = RunSummary.read(summary_path)
    if not summary.done or summary.steps != read_checkpoint(last).get("global_step", 0):
        return None
    if max_steps > summary.steps and not summary.stopped_early:
        return None
    return EndedRun(folder, summary.steps, summary.status, str(best) if best.is_file() else "",
                    summary.best_val_loss if summary.best_val_loss is not None else math.inf, summary.best_val_accuracy,
                    budget.to_train_further(summary.steps))
