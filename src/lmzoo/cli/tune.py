"""python -m lmzoo.tune model=gpt,mlp [key=value ...]: tune each model's settings at a proxy budget (conf/tune.yaml)."""

from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmzoo.cli.folders import write_command_record
from lmzoo.cli.hydra_command import hydra_command


@hydra_command("tune")
def main(cfg: DictConfig) -> float:
    # Imported here so that a mistake on the command line is reported before Lightning and Optuna load.
    from lmzoo.training.plan import Command
    from lmzoo.training.tune import TuneSettings, tune_model

    settings = TuneSettings(**OmegaConf.to_container(cfg.tune, resolve=True))
    study = tune_model(cfg, settings, Command.of_hydra().model, Path(cfg.paths.output_dir),
                       accepted=lambda: write_command_record(cfg))
    finished = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    return min(finished) if finished else float("nan")


class TuneSummary(Callback):
    """After each model's study: SWEEP_DIR/tuned.yaml, the figures and tune.md, and the edge warnings and the
    final comparison's command printed."""

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.COMPLETED:
            return
        from lmzoo.reports.tune import write_tune_report

        tune = config.tune
        print(write_tune_report(config.hydra.sweep.dir, config.seed, tune.final_seeds, list(tune.final)))
