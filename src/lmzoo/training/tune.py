"""Tuning one model's settings at a proxy budget with Optuna: one study, in a SQLite file, per model.

Each trial trains in-process (lmzoo.training.run.train) in its own folder, TRIALS/N, with the values Optuna
suggests for the keys of `tune.search`; its validation losses go to Optuna, whose MedianPruner stops a trial
that is worse than the median of earlier ones at the same step. The study lives in study.db beside the trials,
so the same command continues a tune killed even with kill -9: the trial that was running is run again with the
same values, and finished ones count.
"""

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import optuna
from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError, user_error_behind
from lmzoo.files import write_atomically
from lmzoo.training.plan import Command, prepared_data, settle
from lmzoo.training.run import train
from lmzoo.training.search import MONITORS, TuneSettings, spread

STUDY = "study.db"
TRIALS = "trials.json"
TRIALS_DIR = "trials"
# The user attribute in which a failed trial keeps its error: a study none of whose trials finished names it.
ERROR = "error"
# Trials spread evenly over the search space (lmzoo.training.search.spread) before TPE takes over.
STARTUP_TRIALS = 8


class ReportToTrial(L.Callback):
    """Gives every validation's val/loss (or the `monitor` tune.monitor names) to the Optuna trial; stops the run
    when the pruner says so before its last step."""

    def __init__(self, trial: optuna.Trial, monitor: str = "val/loss"):
        self.trial = trial
        self.monitor = monitor
        self.pruned = False

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), trainer.global_step)
        # At its last step a trial has finished: its loss counts, whatever the median says.
        if trainer.global_step < trainer.max_steps and self.trial.should_prune():
            self.pruned = trainer.should_stop = True


def tune_model(cfg: DictConfig, settings: TuneSettings, model: str, folder: Path,
               accepted: Callable[[], None] | None = None) -> optuna.Study:
    """Run (or continue) the study of `model` in `folder` until `settings.trials` trials have finished, and
    write folder/trials.json. `accepted` is called once the tune's checks have passed, before it writes anything
    into `folder`."""
    for key in settings.search:
        if OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False) is KeyError:
            raise UserError(f"tune.search.{key}: the config has no key {key}; search keys the config has, as optim.lr")
    # A mistake of the config or the data fails every trial alike: found once, before the first.
    settle(cfg, Command(model))
    check_search_ends(cfg, settings, Command(model))
    if settings.monitor == "val/accuracy" and not prepared_data(cfg).scores_answers:
        raise UserError("tune.monitor=val/accuracy needs a synthetic task, whose answers val/accuracy scores "
                        "(data=mqar, noisy_recall or selective_copying); tune text by val/loss")
    if accepted:
        accepted()
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.prune_after) if settings.prune_after
              else optuna.pruners.NopPruner())
    # A failed trial is one line of ours (objective), not Optuna's warning with its traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=model, storage=f"sqlite:///{folder / STUDY}", load_if_exists=True,
                                direction=MONITORS[settings.monitor][1], pruner=pruner)
    # This process holds the folder (lmzoo.cli.folders.RunFolderLock): a trial still marked running was
    # killed with the tune. It fails, and runs again with the same values.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    startup = min(settings.trials, STARTUP_TRIALS)
    if not study.trials:
        for values in spread(settings.search, startup, settings.seed):
            study.enqueue_trial(values)
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    left = settings.trials - len(study.get_trials(deepcopy=False, states=finished))
    if left > 0:
        study.optimize(lambda trial: objective(trial, cfg, settings, folder), n_trials=left, catch=(UserError,))
    write_atomically(folder / TRIALS, json.dumps(trial_records(study, settings), indent=2).encode("utf-8"))
    if not study.get_trials(deepcopy=False, states=finished):
        errors = [t.user_attrs[ERROR] for t in study.get_trials(deepcopy=False) if ERROR in t.user_attrs]
        raise UserError(f"no trial of {model} finished, so it has no tuned value" +
                        (f"; the last failed with: {errors[-1]}" if errors else ""))
    return study


def check_search_ends(cfg: DictConfig, settings: TuneSettings, command: Command) -> None:
    """Each searched key at each end of its range (each choice) is a setting the run accepts: a range reaching
    past a limit (optim.lr below optim.min_lr) would fail every trial near that end."""
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
    """Train one trial in folder/trials/N with the suggested values; its best val/loss (or tune.monitor)."""
    trial_cfg = copy.deepcopy(cfg)
    for space in settings.search.values():
        OmegaConf.update(trial_cfg, space.key, space.suggest(trial))
    trial_cfg.paths.output_dir = str(folder / TRIALS_DIR / str(trial.number))
    report = ReportToTrial(trial, settings.monitor)
    key = MONITORS[settings.monitor][0]
    try:
        result = train(trial_cfg, callbacks=(report,))
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


def trial_records(study: optuna.Study, settings: TuneSettings) -> dict:
    """What the report needs of a study: the search space and each trial's values, state and losses."""
    trials = []
    for trial in study.get_trials(deepcopy=False):
        losses = trial.intermediate_values
        trials.append({"number": trial.number, "state": trial.state.name, "params": trial.params, "value": trial.value,
                       "last_loss": losses[max(losses)] if losses else None, "validations": len(losses),
                       "last_step": max(losses) if losses else None})
    return {"model": study.study_name, "search": {key: space.as_dict() for key, space in settings.search.items()},
            "prune_after": settings.prune_after, "monitor": settings.monitor, "trials": trials}
