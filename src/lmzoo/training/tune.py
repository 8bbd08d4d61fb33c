"""Tuning one model's settings at a proxy budget with Optuna: one study, in a SQLite file, per model.

Each trial trains in-process (lmzoo.training.run.train) in its own folder, TRIALS/N, with the values Optuna
suggests for the keys of `tune.search`. At a few points of its run (ReportToTrial) it is checked on a few
validation batches, and Optuna's MedianPruner stops a trial worse than the median of the finished ones at the same
point. The study lives in study.db beside the trials, so the same command continues a tune killed even with
kill -9: the trial that was running is run again with the same values, and finished ones count. A study records
what its trials trained with (the search, the config), so that more trials of it are trials of the same study.
"""

import contextlib
import copy
import json
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import lightning as L
import optuna
import sqlalchemy.exc
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.data.tasks import correct_answers
from lmzoo.errors import UserError, user_error_behind
from lmzoo.files import write_atomically
from lmzoo.training.choice import STUDY, TRIALS, choose
from lmzoo.training.datamodule import data_module
from lmzoo.training.plan import Command, prepared_data, settle
from lmzoo.training.provenance import PER_RUN_KEYS, provenance, write_provenance
from lmzoo.training.provenance import flatten as flatten_config
from lmzoo.training.run import train
from lmzoo.training.search import MONITORS, Space, TuneSettings, spread

TRIALS_DIR = "trials"
# The user attributes of a trial: a failed one's error (a study none of whose trials finished names it), its run's
# steps, the step a pruned one stopped at, and a repeat's seed (repeats_to_run).
ERROR, STEPS, PRUNED_AT, REPEAT_SEED = "error", "steps", "pruned_at", "repeat_seed"
# The user attributes of a study: its search and what its trials trained with (check_study).
SEARCH, TRAINED_WITH = "search", "trained_with"
# Trials spread evenly over the search space (lmzoo.training.search.spread) before TPE takes over.
STARTUP_TRIALS = 8


def check_steps(steps: int, checks: int) -> dict[int, int]:
    """The steps at which a run of `steps` steps is checked, `checks` times evenly before its end (3: at each
    quarter), each with its number from 1: {step: number}."""
    at = sorted({round(number * steps / (checks + 1)) for number in range(1, checks + 1)} - {0})
    return {step: number for number, step in enumerate(at, 1)}


def check_value(trainer: L.Trainer, lit: L.LightningModule, batches: int, monitor: str = "val/loss") -> float:
    """`monitor` (tune.monitor) on `batches` of the validation batches, spread over them, as validation computes it:
    the mean loss (LitLM.cross_entropy), or val/accuracy's share of a synthetic task's answers predicted exactly
    (lmzoo.data.tasks.correct_answers). In eval mode and without gradients: the model and its training are
    left as they were (no random draw, no running statistic updated)."""
    windows = trainer.datamodule.val_dataloader().dataset
    indices = sorted({round(i * (len(windows) - 1) / max(1, batches - 1)) for i in range(min(batches, len(windows)))})
    was_training = lit.training
    lit.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            checked = [trainer.strategy.batch_to_device(windows[i]) for i in indices]
            if monitor == "val/accuracy":
                correct = torch.cat([correct_answers(lit.cross_entropy(batch)[1].logits, batch[1])
                                     for batch in checked])
                return correct.float().mean().item()
            return statistics.fmean(lit.cross_entropy(batch)[0].item() for batch in checked)
    finally:
        lit.train(was_training)


class ReportToTrial(L.Callback):
    """Checks the run at `checks` points before its end (check_steps) on `batches` validation batches, gives each
    value of `monitor` (check_value) to the Optuna trial at the point's number, and stops the run where the pruner
    says so. The trial's value is the run's own best of the monitor; these checks only judge it against the other
    trials at the same point of their runs, which a run's validations (trainer.val_check_interval, often only at
    the end) may not reach."""

    def __init__(self, trial: optuna.Trial, checks: int, batches: int, monitor: str = "val/loss"):
        self.trial, self.checks, self.batches, self.monitor = trial, checks, batches, monitor
        self.at: dict[int, int] = {}
        self.pruned = False

    def on_train_start(self, trainer, pl_module):
        # Under a minutes budget the steps are not known (max_steps -1): no checks.
        self.at = check_steps(trainer.max_steps, self.checks) if trainer.max_steps > 0 else {}
        self.trial.set_user_attr(STEPS, trainer.max_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # pop: with gradient accumulation, several batches end at one step.
        number = self.at.pop(trainer.global_step, None)
        if number is None:
            return
        self.trial.report(check_value(trainer, pl_module, self.batches, self.monitor), number)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, trainer.global_step)
            self.pruned = trainer.should_stop = True


def tune_model(cfg: DictConfig, settings: TuneSettings, model: str, folder: Path,
               accepted: Callable[[], None] | None = None) -> optuna.Study:
    """Run (or continue) the study of `model` in `folder` until `settings.trials` trials have finished, and
    write folder/trials.json. `accepted` is called once the tune's checks have passed, before it writes anything
    into `folder`."""
    trained_with = check_tune(cfg, settings, model, folder)
    prepared_data(cfg)
    if accepted:
        accepted()
    # The commit and machine of the tune itself (each trial's folder records its own).
    write_provenance(provenance(OmegaConf.to_container(cfg, resolve=True)), folder)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.prune_after) if settings.prunes
              else optuna.pruners.NopPruner())
    # A failed trial is one line of ours (objective), not Optuna's warning with its traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with readable_study(folder / STUDY):
        study = optuna.create_study(study_name=model, storage=storage(folder / STUDY), load_if_exists=True,
                                    direction=MONITORS[settings.monitor][1], pruner=pruner)
        # What later commands must match to add trials to this study (check_study); kept from the first.
        for name, value in ((SEARCH, search_record(settings.search)), (TRAINED_WITH, trained_with)):
            if name not in study.user_attrs:
                study.set_user_attr(name, value)
        # This process holds the folder (lmzoo.cli.folders.RunFolderLock): a trial still marked running was
        # killed with the tune. It fails, and runs again with the same values (a repeat, when repeats_to_run asks).
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            if REPEAT_SEED not in trial.user_attrs:
                study.enqueue_trial(trial.params)
        startup = min(settings.trials, STARTUP_TRIALS)
        if not study.trials:
            for values in spread(settings.search, startup, settings.seed):
                study.enqueue_trial(values)
        study.sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        left = settings.trials - sum(REPEAT_SEED not in t.user_attrs
                                     for t in study.get_trials(deepcopy=False, states=finished))
        if left > 0:
            study.optimize(lambda trial: objective(trial, cfg, settings, folder), n_trials=left, catch=(UserError,))
        # Repeating the values around the best may move the best: until those around it are repeated too.
        while queued := repeats_to_run(study, settings, cfg.seed):
            for params, seed in queued:
                study.enqueue_trial(params, user_attrs={REPEAT_SEED: seed})
            study.optimize(lambda trial: objective(trial, cfg, settings, folder), n_trials=len(queued),
                           catch=(UserError,))
        write_atomically(folder / TRIALS, json.dumps(trial_records(study, settings, cfg.seed), indent=2).encode())
        if not study.get_trials(deepcopy=False, states=finished):
            errors = [t.user_attrs[ERROR] for t in study.get_trials(deepcopy=False) if ERROR in t.user_attrs]
            raise UserError(f"no trial of {model} finished, so it has no tuned value" +
                            (f"; the last failed with: {errors[-1]}" if errors else ""))
    return study


def check_tune(cfg: DictConfig, settings: TuneSettings, model: str, folder: Path) -> dict:
    """What the tune of `model` in `folder` refuses before anything is written (also before Hydra writes, from
    lmzoo.cli.tune): a mistake of the config or the search, which would fail every trial alike, or trials that
    would not be trials of the study already in `folder` (check_study). Returns what its trials train with."""
    for key in settings.search:
        if OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False) is KeyError:
            raise UserError(f"tune.search.{key}: the config has no key {key}; search keys the config has, as optim.lr")
    # A mistake of the config or the data fails every trial alike: found once, before the first.
    settle(cfg, Command(model))
    check_search_ends(cfg, settings, Command(model))
    if settings.monitor == "val/accuracy" and not data_module(instantiate(cfg.data, _convert_="all")).scores_answers:
        raise UserError("tune.monitor=val/accuracy needs a synthetic task, whose answers val/accuracy scores "
                        "(data=mqar, noisy_recall or selective_copying); tune text by val/loss")
    trained_with = trial_setting(cfg, settings, folder)
    check_study(folder, model, settings.search, trained_with)
    return trained_with


def repeats_to_run(study: optuna.Study, settings: TuneSettings, seed: int) -> list[tuple[dict, int]]:
    """The trials that repeat, with tune.repeats other seeds, the best searched value and its neighbours (those the
    report fits its parabola through, lmzoo.training.choice.choose) where they lack them: (params, seed) each. A repeat
    that failed of itself is not run again; one killed with the tune is."""
    if not settings.repeats:
        return []
    choice = choose(trial_records(study, settings, seed))
    if choice is None or choice.fit is None:
        return []
    key, scale = choice.fit.key, (math.log if choice.fit.log else float)
    wanted = settings.trial_seeds(seed)[1:]
    queued = []
    for point in choice.fit.points:
        trials = [t for t in study.get_trials(deepcopy=False) if scale(t.params.get(key, math.nan)) == point.u]
        ran = {t.user_attrs.get(REPEAT_SEED, seed) for t in trials
               if t.state != optuna.trial.TrialState.FAIL or ERROR in t.user_attrs}
        queued += [(trials[0].params, repeat) for repeat in wanted if repeat not in ran]
    return queued


def storage(path: Path) -> str:
    return f"sqlite:///{path}"


@contextlib.contextmanager
def readable_study(path: Path):
    """SQLAlchemy's and Optuna's storage errors while the block reads or writes the study in `path` (a damaged,
    truncated or unreadable study.db) as one line naming the fix."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        cause = getattr(error, "orig", None) or error.__cause__ or error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UserError(f"{path} cannot be used as a study ({reason}); move it away to start this model's study "
                        "again, or choose another tune.folder") from None


def distribution(space: Space) -> optuna.distributions.BaseDistribution:
    """Optuna's record of `space` in a trial (Space.suggest draws from it)."""
    if space.choices is not None:
        return optuna.distributions.CategoricalDistribution(list(space.choices))
    if space.integer:
        return optuna.distributions.IntDistribution(int(space.low), int(space.high))
    return optuna.distributions.FloatDistribution(space.low, space.high, log=space.log)


def search_record(search: dict) -> dict:
    """The search as a study records it: each key's Optuna distribution, as JSON."""
    return {key: optuna.distributions.distribution_to_json(distribution(space)) for key, space in search.items()}


# Settings that change how a trial shows its progress, where its files go or how fast it reads its data, not what
# it learns: a study continued with others of them is the same study.
NOT_LEARNED = ("sample_tokens", "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.num_workers",
               "data.prepare_workers", *PER_RUN_KEYS)
NOT_LEARNED_SECTIONS = ("tune.", "paths.", "logger.", "callbacks.progress_bar.")


def trial_setting(cfg: DictConfig, settings: TuneSettings, folder: Path) -> dict:
    """What every trial of the study trains with but its searched values: the resolved config, flat, without
    the tune's own block and what a trial does not learn from (NOT_LEARNED), its folder written as {study} and
    its data's paths absolute."""
    config = OmegaConf.to_container(cfg, resolve=True)
    setting = {}
    for key, value in flatten_config(config).items():
        if key in settings.search or key in NOT_LEARNED or key.startswith(NOT_LEARNED_SECTIONS):
            continue
        if key in ("data.path", "data.val_path") and isinstance(value, str) and value and "://" not in value:
            value = os.path.abspath(os.path.expanduser(value))
        elif isinstance(value, str):
            value = value.replace(str(folder), "{study}")
        setting[key] = value
    return json.loads(json.dumps(setting, default=str))


def check_study(folder: Path, model: str, search: dict, trained_with: dict | None) -> None:
    """Refuse, before anything is written, to add trials to the study in `folder` (if there is one) that would
    not be trials of that study: another search, or (`trained_with`, trial_setting's) other settings."""
    path = folder / STUDY
    if not path.is_file():
        return
    with readable_study(path):
        try:
            study = optuna.load_study(study_name=model, storage=storage(path))
        except KeyError:
            return
        recorded, trials = study.user_attrs, study.get_trials(deepcopy=False)
    fix = "or tune it in another tune.folder"
    asked = {key: distribution(space) for key, space in search.items()}
    # A study of an earlier release records no search: its trials record what they drew from.
    earlier = ({key: optuna.distributions.json_to_distribution(value) for key, value in recorded[SEARCH].items()}
               if SEARCH in recorded else next((trial.distributions for trial in trials if trial.distributions), None))
    if earlier is not None and earlier != asked:
        raise UserError(f"{folder} holds the study of model={model} over tune.search {shown(earlier)}, not "
                        f"{shown(asked)}; add trials to it with that search, {fix}")
    earlier_setting = recorded.get(TRAINED_WITH)
    if trained_with is None or earlier_setting is None:
        return
    differing = [key for key in sorted(set(earlier_setting) & set(trained_with))
                 if earlier_setting[key] != trained_with[key]]
    if differing:
        theirs = ", ".join(f"{key}={earlier_setting[key]}" for key in differing)
        ours = ", ".join(f"{key}={trained_with[key]}" for key in differing)
        raise UserError(f"{folder} holds the study of model={model}, whose trials trained with {theirs} (this command: "
                        f"{ours}); add trials to it with those settings, {fix}")


def shown(search: dict) -> str:
    """A search, by key, as tune.search takes it: optim.lr=[0.0001,0.03]."""
    return " ".join(f"{key}={{choices: [{','.join(map(str, space.choices))}]}}"
                    if isinstance(space, optuna.distributions.CategoricalDistribution)
                    else f"{key}=[{space.low:g},{space.high:g}]" for key, space in search.items())


def check_search_ends(cfg: DictConfig, settings: TuneSettings, command: Command) -> None:
    """Each searched key at each end of its range (each choice) is a setting the run accepts: a range reaching
    past a limit (optim.lr below an absolute optim.min_lr) would fail every trial near that end."""
    for space in settings.search.values():
        for value in space.ends():
            corner = copy.deepcopy(cfg)
            OmegaConf.update(corner, space.key, value)
            try:
                settle(corner, command)
            except Exception as error:
                refused = user_error_behind(error)
                if refused is None:
                    raise
                shown = f"{value:g}" if isinstance(value, float) else value
                raise UserError(f"tune.search.{space.key} reaches {shown}, which a run refuses ({refused}); search a "
                                "range the run accepts, or change the setting it conflicts with") from None


def objective(trial: optuna.Trial, cfg: DictConfig, settings: TuneSettings, folder: Path) -> float:
    """Train one trial in folder/trials/N with the suggested values (a repeat with its own seed); its best
    val/loss (or tune.monitor)."""
    trial_cfg = copy.deepcopy(cfg)
    for space in settings.search.values():
        OmegaConf.update(trial_cfg, space.key, space.suggest(trial))
    trial_cfg.paths.output_dir = str(folder / TRIALS_DIR / str(trial.number))
    repeat = REPEAT_SEED in trial.user_attrs
    if repeat:
        trial_cfg.seed = trial.user_attrs[REPEAT_SEED]
    # A repeat measures the noise at a value already chosen: it is never pruned.
    report = ReportToTrial(trial, settings.checks if settings.prunes and not repeat else 0, settings.check_batches,
                           settings.monitor)
    key = MONITORS[settings.monitor][0]
    try:
        # Selection reads validation only: a trial measures nothing on the test split.
        result = train(trial_cfg, callbacks=(report,), report_test=False)
        if not report.pruned and (result[key] is None or not math.isfinite(result[key])):
            raise UserError("it never validated")
    except UserError as error:
        values = ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in trial.params.items())
        print(f"trial {trial.number} ({values}) failed: {error}", flush=True)
        trial.set_user_attr(ERROR, str(error))
        raise
    if report.pruned:
        raise optuna.TrialPruned()
    return result[key]


def trial_records(study: optuna.Study, settings: TuneSettings, seed: int) -> dict:
    """What the report needs of a study: the search space and each trial's values, seed, state, loss, checks, steps
    and where a pruned one stopped."""
    trials = []
    for trial in study.get_trials(deepcopy=False):
        checks = trial.intermediate_values
        trials.append({"number": trial.number, "state": trial.state.name, "params": trial.params, "value": trial.value,
                       "seed": trial.user_attrs.get(REPEAT_SEED, seed),
                       "last_loss": checks[max(checks)] if checks else None, "checks": len(checks),
                       "steps": trial.user_attrs.get(STEPS), "pruned_at": trial.user_attrs.get(PRUNED_AT)})
    return {"model": study.study_name, "search": {key: space.as_dict() for key, space in settings.search.items()},
            "prune_after": settings.prune_after if settings.prunes else None, "monitor": settings.monitor,
            "trials": trials}
