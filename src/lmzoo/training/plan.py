"""A run's plan: everything a run derives from its composed config before its first step, resolved once.

The composed config is what the command asked for, and nothing writes into it. The plan holds what follows from
it, each in a typed field: the values a tune chose for the model (tuned=), the run folder, the run's length and
schedule (what a budget buys), its precision and compile setting, and whether it continues a checkpoint or leaves
an ended run as it is. Deriving them takes the data's vocabulary and the model, which planning prepares and
builds (`Start`); the Trainer, the optimizer and what the run records (provenance.json, the checkpoints'
records, summary.json) are built from the plan. Every check a run makes before training is made here, so a
refused run has written nothing into its folder.
"""

import copy
import dataclasses
import sys
from pathlib import Path
from typing import NamedTuple

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.models import LanguageModel
from lmzoo.training.acceleration import choose_precision, device_type
from lmzoo.training.budget import Budget, RunLength, check_steps_not_typed, run_length, world_size
from lmzoo.training.checks import RunSettings, check_before_preparing
from lmzoo.training.datamodule import TaskDataModule, TokenDataModule, data_module
from lmzoo.training.folder import check_folder_is_this_runs, checkpoints_folder
from lmzoo.training.initial_model import initial_model
from lmzoo.training.optim import OptimConfig
from lmzoo.training.resume import EndedRun, check_resumable, ended_run, resume_path
from lmzoo.training.tuned import tuned_values, typed_over_tuned, with_tuned


@dataclasses.dataclass(frozen=True)
class Command:
    """What the command line said besides the config: its model= option and the keys it set (none for a config
    composed in Python)."""

    model: str | None = None
    typed: frozenset[str] = frozenset()

    @classmethod
    def of_hydra(cls) -> "Command":
        """The command of the Hydra job this process runs, if any."""
        if not HydraConfig.initialized():
            return cls()
        hydra = HydraConfig.get()
        # As typed: an interpolation in an override (`++KEY=${oops}`) is text here, not resolved.
        typed = OmegaConf.to_container(hydra.overrides.task, resolve=False)
        return cls(hydra.runtime.choices.get("model"),
                   frozenset(override.lstrip("+~").split("=", 1)[0] for override in typed))


class Settled(NamedTuple):
    """A config's settings, checked before the data is prepared: the top-level keys, the values tuned for the
    model, the config that carries them (a read-only copy of the composed one) and the budget."""

    settings: RunSettings
    tuned: dict | None
    config: DictConfig
    budget: Budget


def settle(cfg: DictConfig, command: Command) -> Settled:
    """The settings' own mistakes, found before anything is written or prepared."""
    settings = RunSettings.of(cfg)
    tuned = typed_over_tuned(tuned_values(settings.tuned, command.model, settings.tuned_at), cfg, command.typed)
    config = with_tuned(cfg, tuned)
    budget = check_before_preparing(config, command.typed)
    check_steps_not_typed(budget, config.trainer.max_steps, command.typed)
    return Settled(settings, tuned, config, budget)


@dataclasses.dataclass(frozen=True)
class Precision:
    """The precision the run trains in (trainer.precision, auto resolved), and the line that says why."""

    value: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint the run continues (None: it starts afresh), and the run left as it is when it has ended."""

    checkpoint: str | None = None
    ended: EndedRun | None = None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run derives from its config before its first step (see the module's docstring)."""

    # The composed config with its tuned values (read-only): the settings the run's parts are built from.
    config: DictConfig
    settings: RunSettings
    command: Command
    tuned: dict | None
    output_dir: Path
    # Its steps, schedule length and validation interval, and the line that says what a budget gave.
    length: RunLength
    # The optimizer's settings, its schedule as long as the run.
    optim: OptimConfig
    precision: Precision
    flops_per_token: int
    resume: Resume

    def trainer_values(self) -> dict:
        """The Trainer's settings the plan resolves: the run's length, validation interval and precision."""
        values = {"max_steps": self.length.max_steps, "val_check_interval": self.length.val_check_interval,
                  "precision": self.precision.value}
        return {**values, **({"max_time": self.length.max_time} if self.length.max_time else {})}

    def recorded_config(self) -> dict:
        """The config as provenance.json and the checkpoints record it: resolved, with the plan's values in it."""
        config = copy.deepcopy(self.config)
        OmegaConf.set_readonly(config, False)
        values = {**{f"trainer.{key}": value for key, value in self.trainer_values().items()},
                  "optim.decay_steps": self.optim.decay_steps}
        for key, value in values.items():
            OmegaConf.update(config, key, value)
        return OmegaConf.to_container(config, resolve=True)


class Start(NamedTuple):
    """What planning built: the data (prepared), the model the run starts from, and its finetune record."""

    datamodule: TokenDataModule | TaskDataModule
    model: LanguageModel
    finetune: dict | None


def plan_run(cfg: DictConfig) -> tuple[RunPlan, Start]:
    """The plan of a run of `cfg`, with the data and model it derives from; every check a run makes before it
    trains, made before anything is written into its folder (a UserError names the first mistake)."""
    command = Command.of_hydra()
    settings, tuned, config, budget = settle(cfg, command)
    output_dir, checkpoints = Path(config.paths.output_dir), checkpoints_folder(config)
    check_folder_is_this_runs(output_dir, checkpoints, settings.resume, settings.ckpt_path,
                              "hydra.run.dir" if HydraConfig.initialized() else "paths.output_dir")
    checkpoint = resume_path(config)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = prepared_data(config)
    model, finetune = initial_model(config, datamodule.vocab_size, datamodule.tokenizer)
    flops_per_token = training_flops_per_token(model, config.block_size, datamodule.scored_share)
    length = resolve_length(config, budget, flops_per_token, command)
    optim = instantiate(config.optim, decay_steps=length.decay_steps)
    precision = Precision(*choose_precision(config.trainer.precision, device_type(config.trainer.accelerator), model,
                                            config.data.batch_size, config.block_size))
    ended = None
    if checkpoint:
        kept = check_resumable(checkpoint, model, datamodule.tokenizer, optim, finetune, settings.init_from,
                               checkpoints)
        best = checkpoints / f"{OmegaConf.select(config, 'callbacks.model_checkpoint.filename', default='best')}.ckpt"
        ended = ended_run(output_dir, checkpoints, checkpoint, length.max_steps, best, budget)
        if kept and not ended:
            print(kept, file=sys.stderr)
    plan = RunPlan(config, settings, command, tuned, output_dir, length, optim, precision, flops_per_token,
                   Resume(checkpoint, ended))
    return plan, Start(datamodule, model, finetune)


def training_flops_per_token(model: LanguageModel, block_size: int, scored_share: float) -> int:
    """The model's training FLOPs per token where the loss scores `scored_share` of the positions (a synthetic
    task's answers, whose logits alone the model computes): the position-wise part at that share."""
    return model.flops_per_token(block_size) - round((1 - scored_share) * model.scored_flops_per_token())


def prepared_data(cfg: DictConfig) -> TokenDataModule | TaskDataModule:
    """The datamodule of cfg.data, its bins prepared (or found prepared), or a task's examples generated."""
    datamodule = data_module(instantiate(cfg.data, _convert_="all"))
    datamodule.prepare_data()
    return datamodule


def resolve_length(cfg: DictConfig, budget: Budget, flops_per_token: int, command: Command) -> RunLength:
    """The run's length (lmzoo.training.budget.run_length) from its settings."""
    trainer = cfg.trainer
    return run_length(budget, max_steps=trainer.max_steps, decay_steps=cfg.optim.decay_steps,
                      val_check_interval=trainer.val_check_interval, warmup_steps=cfg.optim.get("warmup_steps"),
                      step_tokens=cfg.data.batch_size * cfg.block_size * trainer.accumulate_grad_batches
                      * world_size(trainer),
                      accumulate_grad_batches=trainer.accumulate_grad_batches, flops_per_token=flops_per_token,
                      max_steps_typed="trainer.max_steps" in command.typed)
