"""A run folder holds one run: its checkpoints, summary.json, provenance.json and .hydra/ always describe the same
run. Who may train into a folder; imports no Lightning, so the command line checks it before Lightning loads."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError
from lmzoo.training.summary import SUMMARY


def checkpoints_folder(cfg: DictConfig) -> Path:
    """Where a run's checkpoints go (callbacks.model_checkpoint.dirpath); a run without that callback writes none,
    and its folder's checkpoints/ is where an earlier run's are."""
    return Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
                or Path(cfg.paths.output_dir) / "checkpoints")


def earlier_run(folder: Path, checkpoints: Path) -> str | None:
    """What in a run folder shows that a run trained there (a checkpoint or its summary), or None. A run that
    failed before either left nothing to continue: a new run there replaces its provenance and config."""
    found = [*sorted(checkpoints.glob("*.ckpt"))[:1], folder / SUMMARY]
    return next((str(path) for path in found if path.is_file()), None)


def is_own_checkpoint(ckpt_path: str | None, checkpoints: Path) -> bool:
    """Whether `ckpt_path` is one of the checkpoints in the run folder's checkpoints/."""
    return bool(ckpt_path) and Path(ckpt_path).expanduser().resolve().parent == checkpoints.resolve()


def check_folder_is_this_runs(folder: Path, checkpoints: Path, resume: str | None, ckpt_path: str | None,
                              key: str) -> None:
    """Refuse to start a new run in a folder that holds another one, so that its checkpoints, summary, provenance
    and config never describe two runs. The run there may only be continued: resume=auto, or ckpt_path= one of
    its own checkpoints. `key` names the setting that chooses the folder (hydra.run.dir, paths.output_dir)."""
    continued = resume == "auto" or is_own_checkpoint(ckpt_path, checkpoints)
    if continued or (found := earlier_run(folder, checkpoints)) is None:
        return
    raise UserError(f"{folder} already holds a run ({found}); continue it with resume=auto, or start a new run in "
                    f"another folder with {key}=PATH")
