"""The folders a command writes into: a sweep job's folder name; who may write into a run or sweep folder (one
command at a time; a folder holding a run or sweep only continued, never written over); and a run's record of its
command, written once every check has passed.

Hydra makes a run's folder before lmzoo's task runs; the folder checks run in Hydra's callbacks, before anything is
written there, and the record of the command (Hydra's .hydra/, which conf/train.yaml stops Hydra from writing)
once the run is accepted, so that a refused command leaves every file of its folder as it was.
"""

import contextlib
import hashlib
import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import hold_folder, write_atomically
from lmzoo.reports.runs import MULTIRUN
from lmzoo.training.folder import check_folder_is_this_runs

# Set by Lightning, torchrun and SLURM in every process but the first of a distributed run.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
# Where a run keeps its record of the command, as Hydra names it (hydra.output_subdir).
RECORD = ".hydra"
# Longer sweep job folder names are cut, and end in a digest of the whole name (file systems allow 255 bytes).
FOLDER_NAME_CHARS = 100


def folder_name(overrides: str) -> str:
    """A sweep job's folder name from its overrides (conf/train.yaml joins them as model-mlp_trainer.max_steps-20):
    no character of Hydra's override grammar, so a path into it is typed as it is, and not too long."""
    name = re.sub(r"[^\w.+@-]", "-", re.sub(r"[\[\](){}'\"]", "", overrides).replace(",", "+"))
    if len(name) <= FOLDER_NAME_CHARS:
        return name
    return f"{name[: FOLDER_NAME_CHARS - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("lmzoo.folder_name", folder_name, replace=True)


def check_sweep_folder(sweep_dir: Path, overrides: list[str]) -> None:
    """Refuse a sweep into a folder that holds another, so that report.md's command is the one that made its
    table. A sweep there may be continued: the same overrides with resume=auto (each job resumes its own run)."""
    path = sweep_dir / MULTIRUN
    if not path.is_file():
        return
    fix = "choose a new folder with hydra.sweep.dir=PATH"
    if "resume=auto" not in overrides:
        raise UserError(f"{sweep_dir} already holds a sweep ({path}); continue it with the same command and "
                        f"resume=auto, or {fix}")
    earlier = OmegaConf.to_container(OmegaConf.load(path).hydra.overrides.task, resolve=False)
    if [o for o in earlier if not o.startswith("resume=")] != [o for o in overrides if not o.startswith("resume=")]:
        raise UserError(f"{sweep_dir} holds a sweep of other overrides ({' '.join(earlier)}); continue it with "
                        f"those and resume=auto, or {fix}")


def write_command_record(cfg: DictConfig) -> None:
    """The run's record of its command, the files Hydra writes: RECORD/config.yaml (the composed config `cfg`, as
    the task got it), hydra.yaml (Hydra's settings of the run, its working folder among them) and overrides.yaml
    (the command line's overrides), each written atomically. Called once the run is accepted."""
    hydra = HydraConfig.instance().cfg
    folder = Path(hydra.hydra.runtime.output_dir) / RECORD
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra), ("overrides.yaml", hydra.hydra.overrides.task)):
        write_atomically(folder / name, OmegaConf.to_yaml(node).encode("utf-8"),
                         "choose a writable run folder with hydra.run.dir=PATH")


class Refused(BaseException):
    """A UserError raised in a Hydra callback, which Hydra would turn into a warning and go on: as a
    BaseException it stops the command, and hydra_command's main reports the error in it."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


class RunFolderLock(Callback):
    """Holds the run folder (a sweep's folder) from before anything is written into it until the command ends, so
    a second command on the same folder stops in one line instead of overwriting the first one's config,
    checkpoints and summary. Only the first process of a distributed run holds it."""

    # What this process holds; released when the command ends, however it ends (hydra_command's main).
    held = contextlib.ExitStack()
    # A sweep's multirun.yaml as it was before this command (None: there was none) and its launcher's name:
    # Hydra writes the file before the launcher starts, and hydra_command's main puts it back if the launcher
    # refuses to (put_back_sweep_record).
    sweep_before: tuple[Path, bytes | None, str] | None = None

    def __init__(self, hold: bool = True, one_sweep: bool = True):
        self.hold = hold
        # Whether a sweep folder holds one sweep (train's); a tune continues in its folder by design.
        self.one_sweep = one_sweep

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        folder = OmegaConf.select(config, "hydra.run.dir")
        # A run folder that holds another run is refused before anything of this run is written into it.
        self.take(folder, "hydra.run.dir", lambda: check_folder_is_this_runs(
            Path(folder), Path(folder) / "checkpoints", config.get("resume"), config.get("ckpt_path"), "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = OmegaConf.select(config, "hydra.sweep.dir")
        overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        self.take(folder, "hydra.sweep.dir", lambda: self.one_sweep and check_sweep_folder(Path(folder), overrides))
        record = Path(folder) / MULTIRUN
        RunFolderLock.sweep_before = (record, record.read_bytes() if record.is_file() else None,
                                      config.hydra.runtime.choices.get("hydra/launcher"))

    @classmethod
    def put_back_sweep_record(cls) -> str:
        """The sweep's multirun.yaml as it was before this command, for a sweep none of whose jobs started; the
        launcher's name."""
        record, before, launcher = cls.sweep_before
        if before is None:
            record.unlink(missing_ok=True)
        else:
            write_atomically(record, before)
        return launcher

    def take(self, folder: str, key: str, check) -> None:
        """Hold `folder`, then `check` that this command may write into it."""
        if self.hold and all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES):
            try:
                if not str(folder or "").strip():
                    # Path("") is the working folder, which would fill up with checkpoints and logs.
                    raise UserError(f"{key} is empty; name a folder, such as {key}=outputs/runs/NAME")
                self.held.enter_context(hold_folder(folder, "training in", wait=False,
                                                    fix=f"choose another folder with {key}=PATH"))
                check()
            except UserError as error:
                raise Refused(error) from None
