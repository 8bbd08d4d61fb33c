"""Lightning's Trainer as a run's plan describes it, with lmzoo's callbacks, logger and atomic checkpoint writes;
and Lightning's console lines, each printed once and without adverts."""

import logging

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.training.callbacks import ModelSummary
from lmzoo.training.checkpoint_io import AtomicCheckpointIO
from lmzoo.training.checks import OWN_TRAINER_KEYS
from lmzoo.training.plan import RunPlan


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


def build_trainer(plan: RunPlan, extra: tuple = ()) -> L.Trainer:
    """Lightning's Trainer with lmzoo's callbacks and those `extra`, its logger and atomic checkpoint writes, at the
    length and precision of `plan`."""
    cfg = plan.config
    callbacks = [*(instantiate(callback) for callback in cfg.callbacks.values()), *extra]
    if not cfg.trainer.enable_progress_bar:
        # trainer.enable_progress_bar=false turns the bar off; Lightning refuses a bar callback alongside it.
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    # lmzoo's own trainer options (the model and TokensPerSecond act on them): Lightning's Trainer never sees them.
    options = {**OmegaConf.to_container(cfg.trainer, resolve=True), **plan.trainer_values()}
    for key in OWN_TRAINER_KEYS:
        options.pop(key, None)
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
