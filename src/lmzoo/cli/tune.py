"""python -m lmzoo.tune model=gpt,mlp [key=value ...]: tune each model's settings at a proxy budget (conf/tune.yaml)."""

import contextlib
from pathlib import Path

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lmzoo.cli.folders import Refused, folder_name, write_command_record
from lmzoo.cli.hydra_command import hydra_command
from lmzoo.errors import UserError, user_error_behind


def study_folder(model: str) -> str:
    """The folder of a model's study in the tune's folder (conf/tune.yaml's hydra.sweep.subdir): named after the
    model alone, so that every command that tunes it in that folder adds to the same study."""
    return f"model-{folder_name(model)}"


OmegaConf.register_new_resolver("lmzoo.study_folder", study_folder, replace=True)


@hydra_command("tune", mode_in_config=True)
def main(cfg: DictConfig) -> float:
    # Imported here so that a mistake on the command line is reported before Lightning and Optuna load.
    from lmzoo.training.plan import Command
    from lmzoo.training.tune import TuneSettings, tune_model

    settings = TuneSettings(**OmegaConf.to_container(cfg.tune, resolve=True))
    study = tune_model(cfg, settings, Command.of_hydra().model, Path(cfg.paths.output_dir),
                       accepted=lambda: write_command_record(cfg))
    finished = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    return min(finished) if finished else float("nan")


def swept(params: dict | None, overrides: list[str]) -> dict[str, list[str]]:
    """Each key a multirun sets (as Hydra writes it: `+key` adds), with its values, as Hydra's basic sweeper takes
    them: the sweeper's params (an experiment's), then the command line's overrides, a later one of a key
    replacing an earlier."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    keys = {}
    for override in parser.parse_overrides([*(f"{key}={value}" for key, value in (params or {}).items()), *overrides]):
        keys[override.get_key_element()] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                                            else [override.get_value_element_as_str()])
    return keys


def check_one_study_per_model(config: DictConfig) -> None:
    """A tune is one study per model in its folder: refuse, before anything is written, a sweep of another key
    (seed=1,2 would make two studies of each model), a model named twice, a final comparison that would run a
    trial's seed, a study of a model in a folder an earlier lmzoo named after its job, and, for each model as its
    job composes it, what its first trial would refuse or its study in the folder does not match
    (lmzoo.training.tune.check_tune)."""
    keys = swept(config.hydra.sweeper.params, list(config.hydra.overrides.task))
    for key, values in keys.items():
        if key.lstrip("+~") != "model" and len(values) > 1:
            key = key.lstrip("+~")
            fix = ("the trials train with one seed, and the final comparison with tune.final_seeds others"
                   if key == "seed" else f"search it with tune.search.{key}=[LOW,HIGH] or {{choices: [A, B]}}")
            raise UserError(f"a tune holds one study per model, and {key}={','.join(values)} would make "
                            f"{len(values)} of each; give {key} one value ({fix})")
    models = keys.pop("model", [config.hydra.runtime.choices.model])
    if twice := sorted({model for model in models if models.count(model) > 1}):
        raise UserError(f"model={','.join(models)} names {', '.join(twice)} more than once; name each model once")
    fixed = [f"{key}={values[0]}" for key, values in keys.items()]
    sweep_dir = Path(config.hydra.sweep.dir)
    # Imported here: Lightning and Optuna only once the command line has composed.
    from lmzoo.training.search import TuneSettings
    from lmzoo.training.tune import check_tune

    for index, model in enumerate(models):
        if earlier := earlier_study_folders(sweep_dir, model):
            raise UserError(f"{sweep_dir} holds the study of model={model} in {earlier[0].name}, a folder named after "
                            f"its job by an earlier lmzoo; rename it to {study_folder(model)} to add trials to it, or "
                            "choose another tune.folder")
        with job_config(config, [*fixed, f"model={model}"], sweep_dir / study_folder(model)) as job:
            settings = TuneSettings(**OmegaConf.to_container(job.tune, resolve=True))
            check_tune(job, settings, model, Path(job.paths.output_dir))
            if index == 0:
                check_final_seeds(settings.final, settings.trial_seeds(job.seed))


@contextlib.contextmanager
def job_config(config: DictConfig, overrides: list[str], folder: Path):
    """The config of the sweep's job of `overrides` in `folder`, as Hydra composes it for that job (with Hydra's
    config set to it, which ${hydra:...} reads), without its hydra node."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
    with open_dict(job.hydra.runtime):
        job.hydra.runtime.output_dir = str(folder.absolute())
    # As Hydra's run_job does: set for the job, then as it was (before the jobs, not set).
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job)
    try:
        with open_dict(job):
            del job["hydra"]
        yield job
    finally:
        HydraConfig.instance().cfg = before


def check_final_seeds(final: list[str], trial_seeds: list[int]) -> None:
    """Refuse a final comparison (tune.final, as [experiment=reference]) that would run a trial's seed: its row
    would gain from the selection on that seed's noise. Without tune.final, the final command's seeds skip them."""
    if not final:
        return
    try:
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        fixed = [o.input_line for o in parser.parse_overrides(final) if not o.is_sweep_override()]
        composed = compose(config_name="train", overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(f"tune.final={final} is not a command of train: {str(error).strip().splitlines()[0]}") from None
    seeds = swept(composed.hydra.sweeper.params, final).get("seed", [str(composed.seed)])
    if shared := [seed for seed in seeds if seed in map(str, trial_seeds)]:
        raise UserError(f"the final comparison (tune.final={','.join(final)}) runs seed={','.join(seeds)}, among them "
                        f"the trials' seed={','.join(shared)}; tune with another seed")


def earlier_study_folders(sweep_dir: Path, model: str) -> list[Path]:
    """Folders of `sweep_dir` other than the model's study folder that hold a study of `model`: an earlier lmzoo
    named them after their jobs (3_model-gpt_tune.trials-12)."""
    from lmzoo.training.choice import STUDY

    found = []
    for job in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
        hydra_yaml = job / ".hydra" / "hydra.yaml"
        if job.name == study_folder(model) or not (job / STUDY).is_file() or not hydra_yaml.is_file():
            continue
        if OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.model") == model:
            found.append(job)
    return found


class TuneSummary(Callback):
    """Before the tune, its checks (check_one_study_per_model); after each model's study: SWEEP_DIR/tuned.yaml,
    the figures and tune.md, and the edge warnings and the final comparison's command printed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_one_study_per_model(config)
        except Exception as error:
            # Hydra would turn a callback's Exception into a warning and go on.
            if (refused := user_error_behind(error)) is None:
                raise
            raise Refused(refused) from None

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.COMPLETED:
            return
        from lmzoo.reports.tune import write_tune_report

        tune = config.tune
        print(write_tune_report(config.hydra.sweep.dir, config.seed, tune.final_seeds, list(tune.final)))
