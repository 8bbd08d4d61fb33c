"""Build data, model, callbacks, logger and Trainer from a composed config, train, and sample."""

import dataclasses
import logging
import math
import os
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.ckpt import checkpoint_file, read_checkpoint
from lmzoo.checkpoints.load import load_model
from lmzoo.checkpoints.record import ModelRecord, architecture_record
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.errors import UserError, check_field_types
from lmzoo.inference.evaluation import bits_per_byte
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.models.base import sized
from lmzoo.models.presets import override_value
from lmzoo.reports.runs import SUMMARY, RunSummary, check_folder_is_this_runs
from lmzoo.training.acceleration import check_compile, choose_precision, device_type, say
from lmzoo.training.budget import Budget, RunLength, run_length, world_size
from lmzoo.training.callbacks import ModelSummary, TokensPerSecond
from lmzoo.training.checkpoint_io import AtomicCheckpointIO
from lmzoo.training.datamodule import TaskDataModule, TokenDataModule, data_module
from lmzoo.training.finetune import from_pretrained, model_option, source_path
from lmzoo.training.module import LitLM
from lmzoo.training.provenance import provenance, write_provenance


class DropAdverts(logging.Filter):
    """Lightning's tips about its cloud services, printed on every run, say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(name).addFilter(DropAdverts())


def log_each_line_once() -> None:
    """The `lightning` logger prints to the console itself and passes every record on to the root logger, where
    Hydra's console handler prints it again: where the root logger has a console handler, Lightning's goes."""
    if any(type(handler) is logging.StreamHandler for handler in logging.root.handlers):
        lightning = logging.getLogger("lightning")
        for handler in [h for h in lightning.handlers if type(h) is logging.StreamHandler]:
            lightning.removeHandler(handler)


@dataclasses.dataclass(kw_only=True)
class RunSettings:
    """The top-level keys of conf/train.yaml that the run itself reads, checked before anything starts."""

    seed: int
    # true, false or auto (lmzoo.training.acceleration).
    compile: bool | str
    ckpt_path: str | None
    resume: str | None
    init_from: str | None
    sample_tokens: int
    tuned: str | None

    def __post_init__(self):
        check_field_types(self, None)
        check_compile(self.compile)
        # Lightning's seed_everything takes 32-bit seeds, and would replace any other by a random one.
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.sample_tokens < 0:
            raise UserError(f"sample_tokens must be >= 0 (0 samples nothing), got {self.sample_tokens}")
        if self.resume not in (None, "auto"):
            raise UserError(f"resume={self.resume!r} is not understood; use resume=auto or ckpt_path=PATH")

    @classmethod
    def of(cls, cfg: DictConfig) -> "RunSettings":
        return cls(**{field.name: cfg[field.name] for field in dataclasses.fields(cls)})


def check_trainer(trainer: dict) -> None:
    """Refuse the trainer settings Lightning accepts but fails on later."""
    for key in ("max_steps", "val_check_interval", "accumulate_grad_batches", "log_every_n_steps"):
        value = trainer.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"trainer.{key} must be a positive integer, got {value!r}")
    peak = trainer.get("peak_flops")
    if peak is not None and (not isinstance(peak, (int, float)) or isinstance(peak, bool) or peak <= 0):
        raise UserError(f"trainer.peak_flops must be the hardware's peak FLOP/s, a positive number, or null; got {peak!r}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0):
        raise UserError(f"trainer.gradient_clip_val must be >= 0 or null, got {clip!r}")
    if not isinstance(trainer.get("skip_nonfinite", False), bool):
        raise UserError(f"trainer.skip_nonfinite must be true or false, got {trainer['skip_nonfinite']!r}")
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        if "FSDP" in str(trainer.get("strategy")):
            raise UserError("trainer=fsdp shards a model over CUDA GPUs, and torch sees none; train without trainer=fsdp "
                            "(trainer=default)")
        raise UserError(f"trainer.accelerator={trainer['accelerator']} needs a CUDA GPU, and torch sees none; "
                        "use trainer.accelerator=auto (or cpu)")


def check_callbacks(callbacks: dict) -> None:
    """Refuse callback settings Lightning takes as they come and trips over mid-run."""
    patience = (callbacks.get("early_stopping") or {}).get("patience", 0)
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise UserError(f"callbacks.early_stopping.patience must be an integer >= 0 (validation checks without "
                        f"improvement before stopping), got {patience!r}")


def as_list(value):
    """Tuples as lists: a config read from a checkpoint and one from the command line hold sequences either way."""
    return list(value) if isinstance(value, tuple) else value


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: ckpt_path, or with resume=auto the run folder's last.ckpt."""
    if cfg.ckpt_path:
        return str(checkpoint_file(cfg.ckpt_path))
    if cfg.resume == "auto":
        last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
        return str(last) if last.is_file() else None
    return None


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


def check_resumable(ckpt_path: str, lit: LitLM, init_from: str | None = None) -> None:
    """A sound lmzoo checkpoint of this release, of the model the run builds, trained on tokens of the same
    tokenizer as the data. Optimizer settings that differ from the checkpoint's are reported: the
    checkpoint's optimizer and learning-rate schedule are the ones that continue."""
    record = ModelRecord.read(read_checkpoint(ckpt_path)["lmzoo"])
    check_same_start(record, ckpt_path, init_from, lit.finetune)
    if record.tokenizer != lit.tokenizer:
        raise UserError(f"{ckpt_path} was trained with the {describe_tokenizer(record.tokenizer)}, but the data uses "
                        f"the {describe_tokenizer(lit.tokenizer)}; resume with the data=/tokenizer= of that run")
    ours = architecture_record(lit.model)
    # Dropout and the init do not change the weights a run continues from: a resumed run may change them.
    changed = {key: value for key, value in record.config.items()
               if key not in ("dropout", "init") and as_list(ours["config"].get(key)) != as_list(value)}
    if record.architecture != ours["architecture"] or set(changed) & set(type(lit.model.config).choices):
        config = record.build_config()
        raise UserError(f"{ckpt_path} holds a model={model_option(config)} model, not what model= builds; resume "
                        f"with model={model_option(config)} and that run's model settings")
    if changed:
        settings = " ".join(f"model.{key}={override_value(value)}" for key, value in changed.items())
        raise UserError(f"{ckpt_path} holds a model of other settings than the run builds; resume with {settings}")
    kept = {key: value for key, value in (record.optim or {}).items() if vars(lit.optim).get(key) != value}
    if kept:
        theirs = ", ".join(f"{key}={value}" for key, value in kept.items())
        asked = ", ".join(f"optim.{key}={vars(lit.optim)[key]}" for key in kept)
        decay = (" (optim.decay_steps follows trainer.max_steps: steps past the checkpoint's decay run at "
                 "optim.min_lr)") if "decay_steps" in kept else ""
        print(f"warning: resuming keeps the checkpoint's optimizer and learning-rate schedule ({theirs}), not this "
              f"command's {asked}{decay}", file=sys.stderr)


def model_choice() -> str | None:
    """The model= of the command line (gpt, mlp, ...); None outside a Hydra command (a config composed in Python)."""
    return HydraConfig.get().runtime.choices.model if HydraConfig.initialized() else None


def apply_tuned(cfg: DictConfig) -> dict | None:
    """The values a tune chose for this run's model (`tuned=PATH`, the tuned.yaml python -m lmzoo.tune wrote),
    set in `cfg`; None without `tuned`."""
    if not cfg.tuned:
        return None
    path = Path(cfg.tuned).expanduser()
    if not path.is_file():
        raise UserError(f"tuned={cfg.tuned} does not exist; pass the tuned.yaml that python -m lmzoo.tune wrote in "
                        "its folder")
    tuned = OmegaConf.to_container(OmegaConf.load(path))
    model = model_choice()
    if not isinstance(tuned, dict) or model not in tuned:
        models = ", ".join(tuned) if isinstance(tuned, dict) else "none"
        raise UserError(f"{path} holds no tuned values for model={model} (it has {models}); tune it with "
                        f"python -m lmzoo.tune model={model}")
    for key, value in tuned[model].items():
        if OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False) is KeyError:
            raise UserError(f"{path} tunes {key}, which the config has no key for; tune again with this release")
        OmegaConf.update(cfg, key, value)
    return tuned[model]


def build(cfg: DictConfig, ckpt_path: str | None = None,
          callbacks: tuple = ()) -> tuple[TokenDataModule | TaskDataModule, LitLM, L.Trainer]:
    """The datamodule (prepared), the model wrapped for training (compiled with compile=true), and the Trainer
    a config describes, with `callbacks` added to its own; with `ckpt_path`, checked to resume that checkpoint
    before anything is written."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = prepared_data(cfg)
    tokenizer = datamodule.tokenizer
    finetune = None
    config = instantiate(cfg.model, vocab_size=datamodule.vocab_size, _convert_="all")
    if cfg.init_from:
        recipe = instantiate(cfg.finetune, _convert_="all") if cfg.finetune else None
        model, finetune = from_pretrained(cfg.init_from, config, tokenizer, cfg.block_size, recipe)
    elif cfg.finetune:
        raise UserError("a finetune recipe needs pretrained weights; pass init_from=PATH or init_from=hf:NAME")
    else:
        model = build_model(config)
    flops_per_token = model.flops_per_token(cfg.block_size)
    # Before the optimizer's schedule and the provenance read the run's length and precision.
    with_length(cfg, resolve_length(cfg, flops_per_token))
    width = getattr(model.config, model.config.width_field) if model.config.width_field else None
    cfg.trainer.precision, reason = choose_precision(cfg.trainer.precision, device_type(cfg.trainer.accelerator), width)
    lit = LitLM(model, instantiate(cfg.optim), tokenizer, datamodule.val_tokens_per_byte,
                skip_nonfinite=cfg.trainer.get("skip_nonfinite", False), finetune=finetune, provenance=provenance(cfg),
                flops_per_token=flops_per_token, scores_answers=datamodule.scores_answers)
    if ckpt_path:
        check_resumable(ckpt_path, lit, cfg.init_from)
    if cfg.compile is True:
        # Compiles the model's forward in place, so checkpoints keep their plain parameter names.
        model.compile()
    trainer = build_trainer(cfg, callbacks)
    say(trainer, f"precision: {cfg.trainer.precision} ({reason})")
    return datamodule, lit, trainer


def resolve_length(cfg: DictConfig, flops_per_token: int) -> RunLength:
    """The run's length (lmzoo.training.budget.run_length) from its settings, saying what a budget gave."""
    trainer = cfg.trainer
    length = run_length(Budget(**cfg.budget), max_steps=trainer.max_steps, decay_steps=cfg.optim.decay_steps,
                        val_check_interval=trainer.val_check_interval, warmup_steps=cfg.optim.get("warmup_steps"),
                        step_tokens=cfg.data.batch_size * cfg.block_size * trainer.accumulate_grad_batches
                        * world_size(trainer),
                        accumulate_grad_batches=trainer.accumulate_grad_batches, flops_per_token=flops_per_token,
                        max_steps_typed=typed("trainer.max_steps"))
    if length.said:
        print(length.said, file=sys.stderr)
    return length


def typed(key: str) -> bool:
    """Whether the command line set `key` (Python callers compose configs without Hydra's record of it)."""
    return HydraConfig.initialized() and any(override.lstrip("+~").split("=", 1)[0] == key
                                             for override in HydraConfig.get().overrides.task)


def with_length(cfg: DictConfig, length: RunLength) -> None:
    """Write the run's length into its config, which the Trainer, the schedule and the provenance are built from."""
    cfg.trainer.max_steps, cfg.optim.decay_steps = length.max_steps, length.decay_steps
    cfg.trainer.val_check_interval = length.val_check_interval
    if length.max_time:
        cfg.trainer.max_time = length.max_time


def prepared_data(cfg: DictConfig) -> TokenDataModule | TaskDataModule:
    """The datamodule of cfg.data, its bins prepared (or found prepared), or a task's examples generated."""
    datamodule = data_module(instantiate(cfg.data, _convert_="all"))
    datamodule.prepare_data()
    return datamodule


def build_model(config):
    """The model of `config`, sized to model.target_params when given (saying to what)."""
    resized = sized(config)
    check_fits_in_memory(resized)
    model = resized.build()
    if resized is not config:
        widths = " ".join(f"model.{key}={value}" for key, value in resized.as_dict().items()
                          if value != getattr(config, key))
        print(f"model.target_params={config.target_params:g}: {widths}, {model.parameter_counts().active:,} "
              "active parameters", file=sys.stderr)
    return model


def check_fits_in_memory(config) -> None:
    """Refuse a model whose float32 weights alone exceed the machine's memory, before allocating them (the
    kernel would kill the process, or torch fail deep inside the build)."""
    with torch.device("meta"):
        total = config.build().parameter_counts().total
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 4 * total > memory:
        raise UserError(f"the model has {total:,} parameters, {4 * total / 1e9:,.0f} GB of float32 weights, more than "
                        f"this machine's {memory / 1e9:,.0f} GB of memory; lower model.target_params or the model's "
                        "width and depth")


def build_trainer(cfg: DictConfig, extra: tuple = ()) -> L.Trainer:
    """Lightning's Trainer with lmzoo's callbacks and those `extra`, its logger and atomic checkpoint writes."""
    callbacks = [*(instantiate(callback) for callback in cfg.callbacks.values()), *extra]
    if not cfg.trainer.enable_progress_bar:
        # trainer.enable_progress_bar=false turns the bar off; Lightning refuses a bar callback alongside it.
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    # skip_nonfinite and peak_flops are lmzoo's own trainer options (the model and TokensPerSecond act on them):
    # Lightning's Trainer never sees them.
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    options.pop("skip_nonfinite", None)
    options.pop("peak_flops", None)
    # lmzoo's summary in place of Lightning's (see ModelSummary).
    if options.pop("enable_model_summary", True):
        callbacks.append(ModelSummary())
    try:
        return instantiate(options, callbacks=callbacks, logger=instantiate(cfg.logger), plugins=[AtomicCheckpointIO()],
                           enable_model_summary=False)
    except InstantiationException as error:
        # Lightning checks the rest of its settings itself (precision, devices, strategy, ...).
        if isinstance(error.__cause__, (MisconfigurationException, ValueError)):
            raise UserError(f"Lightning refuses the trainer settings: {str(error.__cause__).splitlines()[0]}; "
                            "see conf/trainer/") from None
        raise


def check_before_preparing(cfg: DictConfig, budgeted: bool) -> None:
    """The settings of data, model and optimizer, checked before the data is prepared, which may take long.
    The data's own come first (block_size among them); the model's vocabulary comes from the data, so the
    checks that read it run again with the real one; a budget sets the schedule's length from the model's FLOPs."""
    instantiate(cfg.data, _convert_="all")
    if not cfg.init_from:
        instantiate(cfg.model, vocab_size=2, _convert_="all")
    # A budget's schedule length is known once the model is built: its own settings are checked meanwhile.
    instantiate(cfg.optim, **({"decay_steps": sys.maxsize} if budgeted else {}))


def check_settings(cfg: DictConfig) -> dict | None:
    """The settings' own mistakes, found before anything is written or prepared; cfg takes its tuned values
    (tuned=PATH), which are returned."""
    RunSettings.of(cfg)
    tuned = apply_tuned(cfg)
    check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))
    check_callbacks(OmegaConf.to_container(cfg.callbacks, resolve=True))
    check_before_preparing(cfg, bool(Budget(**cfg.budget).given()))
    return tuned


def train(cfg: DictConfig, callbacks: tuple = ()) -> dict:
    """Train as configured, with `callbacks` beside the config's; return the best checkpoint path and validation
    loss."""
    log_each_line_once()
    tuned = check_settings(cfg)
    check_folder_is_this_runs(Path(cfg.paths.output_dir), Path(cfg.callbacks.model_checkpoint.dirpath), cfg.resume,
                              cfg.ckpt_path, "hydra.run.dir" if HydraConfig.initialized() else "paths.output_dir")
    ckpt_path = resume_path(cfg)
    datamodule, lit, trainer = build(cfg, ckpt_path, callbacks)
    if cfg.resume == "auto" and (ended := ended_run(Path(cfg.paths.output_dir), ckpt_path, trainer)):
        return ended
    if trainer.is_global_zero:
        write_provenance(lit.provenance, cfg.paths.output_dir)
    # Our checkpoints hold RNG states (numpy, Python), which torch's weights-only loading refuses.
    trainer.fit(lit, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    save_last_step(trainer, lit)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    result = {"best_checkpoint": best, "best_val_loss": lit.best_val_loss, "best_val_accuracy": lit.best_val_accuracy,
              "steps": trainer.global_step}
    if trainer.is_global_zero:
        run_summary(lit, trainer, cfg.seed, tuned).write(cfg.paths.output_dir)
    if lit.diverged_at is not None:
        raise UserError(f"the run diverged at step {lit.diverged_at}: val/loss is NaN or inf ({usable_best(trainer)}); "
                        "train again with a lower optim.lr")
    if best and cfg.sample_tokens > 0 and trainer.is_global_zero:
        model, tokenizer, _ = load_model(best)
        settings = SamplingSettings(max_new_tokens=cfg.sample_tokens)
        text = sample_text(model, tokenizer, "", settings, torch.Generator().manual_seed(cfg.seed))
        print(f"\nSample from {best}:\n{text}\n")
    return result


def ended_run(folder: Path, ckpt_path: str | None, trainer: L.Trainer) -> dict | None:
    """With resume=auto, the result of a run that already ended in `folder` (its summary says done, at the step of
    its last.ckpt, which reached max_steps or stopped early), said in one line; None when there is a run to
    continue. An ended run is left as it is, so that its summary and provenance keep describing the run that
    trained (a sweep continued with resume=auto passes over its finished jobs)."""
    summary_path = folder / SUMMARY
    if not ckpt_path or not summary_path.is_file():
        return None
    summary = RunSummary.read(summary_path)
    step = read_checkpoint(ckpt_path).get("global_step", 0)
    reached_its_end = step >= trainer.max_steps or summary.status.startswith("done: stopped early")
    if not summary.status.startswith("done") or summary.steps != step or not reached_its_end:
        return None
    checkpoint = trainer.checkpoint_callback
    best = Path(checkpoint.dirpath) / f"{checkpoint.filename}{checkpoint.FILE_EXTENSION}" if checkpoint else None
    print(f"{folder} already ended at step {step} ({summary.status}); it is left as it is, its summary in "
          f"{summary_path}", file=sys.stderr)
    return {"best_checkpoint": str(best) if best and best.is_file() else "",
            "best_val_loss": summary.best_val_loss if summary.best_val_loss is not None else math.inf,
            "best_val_accuracy": summary.best_val_accuracy, "steps": step}


def save_last_step(trainer: L.Trainer, lit: LitLM) -> None:
    """last.ckpt at the step the run ended, as its summary reports it, however it stopped (early stopping, a
    minutes budget between validations); say so when early stopping ended it."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint and checkpoint.save_last and lit.saved_step != trainer.global_step and trainer.global_step:
        trainer.save_checkpoint(Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")
    stopper = early_stopper(trainer)
    if trainer.is_global_zero and stopper:
        print(f"stopped early at step {trainer.global_step} of {trainer.max_steps}: {stopper.monitor} did not improve in "
              f"{stopper.patience} validations (callbacks.early_stopping.patience); the best model is in "
              f"{checkpoint and checkpoint.best_model_path}", file=sys.stderr)


def usable_best(trainer: L.Trainer) -> str:
    """Whether a diverged run's best checkpoint was saved before the divergence (Lightning scores NaN as inf)."""
    checkpoint = trainer.checkpoint_callback
    score = checkpoint and checkpoint.best_model_score
    if score is not None and torch.isfinite(score):
        return f"{checkpoint.best_model_path}, saved before, is intact"
    return "no checkpoint was saved before it"


def early_stopper(trainer: L.Trainer) -> EarlyStopping | None:
    """The EarlyStopping callback, if it ended the run."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    return stopper if stopper and stopper.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED else None


def run_summary(lit: LitLM, trainer: L.Trainer, seed: int, tuned: dict | None = None) -> RunSummary:
    """The run's row in a sweep's comparison table (see lmzoo.reports.compare), over all of its segments
    when it was resumed: tokens, tokens/s, MFU and wall time are carried in its checkpoints."""
    total, active = lit.model.parameter_counts()
    throughput = next((c for c in trainer.callbacks if isinstance(c, TokensPerSecond)), None)
    tokens = throughput and throughput.tokens
    best = None if math.isinf(lit.best_val_loss) else lit.best_val_loss
    # Bits per byte put models with different tokenizers on one scale.
    best_bpb = bits_per_byte(best, lit.val_tokens_per_byte) if best is not None and lit.val_tokens_per_byte else None
    return RunSummary(
        model=model_choice() or type(lit.model).__name__,
        parameters=total,
        active_parameters=active,
        best_val_loss=best,
        best_val_bpb=best_bpb,
        best_val_accuracy=lit.best_val_accuracy,
        state_bytes=lit.state_bytes,
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
