"""The checks of a run's settings that need no data: the top-level keys, the trainer's and callbacks' settings
Lightning would trip over mid-run, and the data's, model's and optimizer's own, before the data is prepared."""

import dataclasses
import inspect
import sys

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.data import DataConfig
from lmzoo.data.tasks import TASKS
from lmzoo.errors import UserError, check_field_types, nearest
from lmzoo.machine import REPRO_ENVIRONMENT, instruction_set_held
from lmzoo.models.base import ModelConfig
from lmzoo.models.lora import LoRA
from lmzoo.training.acceleration import check_compile
from lmzoo.training.budget import Budget
from lmzoo.training.optim import OptimConfig
from lmzoo.training.targets import named_class
from lmzoo.training.tuned import TUNED_AT


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    repro: bool
    # Where the run takes a fitted tuned value (lmzoo.training.tuned.TUNED_AT).
    tuned_at: str

    def __post_init__(self):
        check_field_types(self, None)
        check_compile(self.compile)
        # Lightning's seed_everything takes 32-bit seeds, and would replace any other by a random one.
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.sample_tokens < 0:
            raise UserError(f"sample_tokens must be >= 0 (0 samples nothing), got {self.sample_tokens}")
        if self.tuned_at not in TUNED_AT:
            raise UserError(f"tuned_at={self.tuned_at} is not one of {', '.join(TUNED_AT)}: the tuned value, or the "
                            "searched value below or above the best")
        if self.tuned_at != "chosen" and not self.tuned:
            raise UserError(f"tuned_at={self.tuned_at} takes a value beside a tuned one, and the run has none; pass "
                            "tuned=PATH (the tuned.yaml python -m lmzoo.tune wrote)")
        if self.resume not in (None, "auto"):
            raise UserError(f"resume={self.resume!r} is not understood; use resume=auto or ckpt_path=PATH")
        if self.repro and not instruction_set_held():
            raise UserError("repro=true holds the kernels at AVX2 only when typed on the command line of python -m "
                            "lmzoo.train or lmzoo.tune (it must act before torch loads); type repro=true there, or set "
                            + " ".join(f"{key}={value}" for key, value in REPRO_ENVIRONMENT.items()))

    @classmethod
    def of(cls, cfg: DictConfig) -> "RunSettings":
        return cls(**{field.name: cfg[field.name] for field in dataclasses.fields(cls)})


# lmzoo's own trainer options (conf/trainer/default.yaml), which build_trainer takes out before the Trainer sees the rest.
OWN_TRAINER_KEYS = ("skip_nonfinite", "peak_flops")


def check_trainer_keys(trainer: dict) -> None:
    """Refuse a key that the trainer's class does not take (`++trainer.KEY=...` adds any), as the other sections'
    unknown keys are refused, before the data is prepared."""
    target = trainer.get("_target_")
    cls = named_class(str(target)) if target is not None else None
    if cls is None and target is not None:
        # A _target_ that names no class: instantiating it says so.
        return
    if not (isinstance(cls, type) and issubclass(cls, L.Trainer)):
        given = " is deleted" if target is None else f"={target} is not a Lightning Trainer"
        raise UserError(f"trainer._target_{given}; leave trainer._target_ as the config has it (choose another "
                        "trainer with trainer=OPTION)")
    takes = [*inspect.signature(cls).parameters, *OWN_TRAINER_KEYS]
    for key in trainer:
        if key != "_target_" and key not in takes:
            known = [name for name in takes if name not in ("self", "args", "kwargs")]
            raise UserError(f"trainer has no key {key}{nearest(key, known) or '; see conf/trainer/default.yaml'}")


def check_trainer(trainer: dict) -> None:
    """Refuse the trainer settings Lightning accepts but fails on later."""
    check_trainer_keys(trainer)
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


def check_before_preparing(cfg: DictConfig, typed: frozenset[str] = frozenset()) -> Budget:
    """The settings of trainer, callbacks, budget, data, model, finetune recipe and optimizer, checked before the data
    is prepared, which may take long; the budget, checked. The data's own come first (block_size among them); the
    model's vocabulary comes from the data, so the checks that read it run again with the real one; a budget sets
    the schedule's length from the model's FLOPs. `typed`: the keys the command line set, by which a model knob
    typed that the model would not read is refused."""
    check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))
    check_callbacks(OmegaConf.to_container(cfg.callbacks, resolve=True))
    budget = budget_of(OmegaConf.to_container(cfg.budget, resolve=True))
    built(cfg, "data", (DataConfig, *TASKS.values()))
    if not cfg.init_from:
        built(cfg, "model", ModelConfig, vocab_size=2).check_new(typed)
    if cfg.finetune:
        built(cfg, "finetune", LoRA)
    # A budget's schedule length is known once the model is built: its own settings are checked meanwhile.
    built(cfg, "optim", OptimConfig, **({"decay_steps": sys.maxsize} if budget.given() else {}))
    return budget


def budget_of(values: dict) -> Budget:
    """The budget section, its keys checked (lmzoo builds it, not Hydra's instantiate, which would name them)."""
    keys = [field.name for field in dataclasses.fields(Budget)]
    for key in values:
        if key not in keys:
            raise UserError(f"budget has no key {key}{nearest(key, keys)}; its keys are {', '.join(keys)}")
    return Budget(**values)


def built(cfg: DictConfig, section: str, kind: type | tuple[type, ...], **arguments):
    """cfg.SECTION built by its `_target_`, refused in one line unless that builds a `kind`: deleted
    (`~SECTION._target_`) it leaves a dict; another class or function something the run cannot use."""
    # Resolved first, under its own key for Hydra's messages: instantiating the read-only config itself writes into
    # it where a value interpolates a whole section (data.batch_size=${model}).
    node = OmegaConf.create({section: OmegaConf.to_container(cfg[section], resolve=True)})[section]
    target = node.get("_target_")
    named = target is None or isinstance(target, str)
    value = instantiate(node, _convert_="all", **arguments) if named else None
    if not isinstance(value, kind):
        given = (" is deleted" if target is None else f"={target} builds no {section} config lmzoo knows" if named
                 else f" is a {type(target).__name__}, not a class's name")
        raise UserError(f"{section}._target_{given}; leave {section}._target_ as the config has it (choose another "
                        f"{section} with {section}=OPTION)")
    return value
