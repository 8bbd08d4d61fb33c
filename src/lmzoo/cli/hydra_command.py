"""Entry points on Hydra: a config from conf/ composed with the command line, and every mistake one line.

Hydra reports a bad override in several lines (and a page of grammar for a bad value). lmzoo asks Hydra
for its errors as exceptions and prints one line, `error: ...`, naming the fix, with exit status 2;
HYDRA_FULL_ERROR=1 still shows Hydra's whole text.

Values of the keys a command names as literal (paths, prompts) are taken as typed: the command quotes them
for Hydra, so `prompt=宝玉道` or a path holding '=' needs no quoting of its own.
"""

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import os
import re
import sys
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from lmzoo.cli.compat import (WithoutFailedJobLines, failed_instantiation, group_not_in_defaults, is_ambiguous_value,
                              not_an_override)
from lmzoo.errors import UserError, report_user_errors, user_error_behind
from lmzoo.files import hold_folder
from lmzoo.models.presets import moved_keys
from lmzoo.reports.runs import check_folder_is_this_runs, check_sweep_folder

# Set by Lightning, torchrun and SLURM in every process but the first of a distributed run.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
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


def job_gpu(job_number: int) -> list[int]:
    """The GPU of sweep job `job_number` (conf/trainer/gpu_per_job.yaml): one each, round robin over the GPUs."""
    import torch

    return [int(job_number) % max(1, torch.cuda.device_count())]


OmegaConf.register_new_resolver("lmzoo.job_gpu", job_gpu, replace=True)


def hydra_command(config_name: str, literal: tuple[str, ...] = ()):
    """Turn `task(cfg)` into a command line whose config is conf/CONFIG_NAME.yaml plus the arguments; the
    values of the `literal` keys are taken as typed."""

    def decorate(task):
        # True from the start of the task until it returns: its errors are not Hydra's, and keep their tracebacks.
        running = False

        @functools.wraps(task)
        def run_task(cfg):
            nonlocal running
            running = True
            try:
                result = task(cfg)
            except MissingMandatoryValue as error:
                key = error.full_key
                raise UserError(f"{key} is required; pass {key}=...") from None
            except InstantiationException as error:
                unknown = unknown_key(error)
                if unknown is None:
                    raise
                raise unknown from None
            running = False
            return result

        # Hydra names the job after the task's module (lmzoo.cli.train: "train"), so `job` wraps the task too.
        @functools.wraps(task)
        def job(cfg):
            # In a sweep, a job's mistake fails that job only: Hydra records it, runs the others, then raises it.
            return (run_task if in_sweep() else report_user_errors(run_task))(cfg)

        run = hydra.main(config_path="pkg://lmzoo.conf", config_name=config_name, version_base="1.3")(job)

        @functools.wraps(task)
        @report_user_errors
        def main():
            nonlocal running
            running = False
            sys.argv = [sys.argv[0], *quote_literal_values(sys.argv[1:], literal)]
            check_flags(sys.argv[1:], config_name)
            asked = os.environ.get("HYDRA_FULL_ERROR")
            # Hydra then raises its errors instead of printing them.
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                with contextlib.redirect_stderr(WithoutFailedJobLines(sys.stderr)):
                    return run()
            except (HydraException, OmegaConfBaseException) as error:
                # A sweep ends by raising the error of a failed job, which may be a UserError Hydra wrapped.
                if asked == "1" or running or user_error_behind(error):
                    raise
                print(f"error: {explain(error, config_name)}", file=sys.stderr)
                sys.exit(2)
            except Refused as refused:
                raise refused.error from None
            except OSError as error:
                # Before the task: Hydra making the run folder or writing its .hydra/ there.
                if running:
                    raise
                raise UserError(f"cannot write {error.filename} ({error.strerror or error}); "
                                "choose a writable folder with hydra.run.dir=PATH") from None
            finally:
                RunFolderLock.held.close()
                if asked is None:
                    del os.environ["HYDRA_FULL_ERROR"]
                else:
                    os.environ["HYDRA_FULL_ERROR"] = asked

        return main

    return decorate


def check_flags(args: list[str], command: str) -> None:
    """Hydra's flags (--cfg job, -m, ...) as Hydra parses them, but a mistake in them is one line, not argparse's
    usage page."""

    def refuse(message: str):
        raise UserError(f"{message}; see python -m lmzoo.{command} --help")

    parser = get_args_parser()
    parser.error = refuse
    parser.parse_args(args)


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def explain(error: Exception, command: str) -> str:
    """One line for an error Hydra met while composing the config."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        return f"{group}={option} is not an option; choose one of {', '.join(error.options)}{nearest(option, error.options)}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        section, _, key = (cause.full_key or cause.key or "").rpartition(".")
        if section == "model" and (moved := moved_keys(key)):
            return f"model.{key} is a knob of the parts that have it now: set {' or '.join(moved)}"
        keys = [str(k) for k in cause.parent_node.keys()] if cause.parent_node is not None else []
        keys = [k for k in keys if k not in ("hydra", "_target_")]
        where = section or "the config"
        hint = nearest(key, keys) or (f"; its keys are {', '.join(keys)}" if keys else "; it has no keys to set")
        return f"{where} has no key {key}{hint}"
    first = str(error).strip().splitlines()[0]
    if group := group_not_in_defaults(first):
        return f"there is no option group {group}; see python -m lmzoo.{command} --help for the groups"
    if (argument := not_an_override(first)) is not None:
        return f"{argument!r} is not an override: write KEY=VALUE, such as model=gpt_rope (see python -m lmzoo.{command} --help)"
    if isinstance(error, OverrideParseException) or is_ambiguous_value(first):
        return f"{first.rstrip('.')}: quote a value that holds spaces, commas, brackets or '=': key='value'"
    return first


def unknown_key(error: InstantiationException) -> UserError | None:
    """A key added with `+section.key=...` that the section's class does not take, as one line naming its keys."""
    key = re.search(r"unexpected keyword argument '(\w+)'", str(error.__cause__))
    failed = failed_instantiation(str(error))
    if not (isinstance(error.__cause__, TypeError) and key and failed):
        return None
    section, target = failed
    try:
        keys = [field.name for field in dataclasses.fields(get_class(target)) if field.init]
    except (TypeError, ImportError, ValueError):
        keys = []
    hint = nearest(key.group(1), keys) or (f"; its keys are {', '.join(keys)}" if keys else "")
    return UserError(f"{section} has no key {key.group(1)}{hint}")


def nearest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def quote_literal_values(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """The arguments with the values of `keys` quoted for Hydra, so that they mean what was typed.

    A value already in quotes is left as it is, as is `[A,B]` (a list) whose unquoted items are quoted one
    by one: `prompt=[宝玉道,'Hello, world']`.
    """
    quoted = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and key in keys and value and not is_quoted(value):
            if value.startswith("[") and value.endswith("]"):
                items = [item.strip() for item in split_items(value[1:-1])]
                value = "[" + ",".join(item if is_quoted(item) else hydra_quote(item) for item in items if item) + "]"
            else:
                value = hydra_quote(value)
        quoted.append(f"{key}{equals}{value}")
    return quoted


def is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra value: quotes, interpolations (`${`) and the backslashes before them
    (or at the end) escaped, every other character as it is."""
    escaped = re.sub(r"(\\*)('|\$\{|$)", lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), text)
    return f"'{escaped}'"


def split_items(text: str) -> list[str]:
    """`text` split at the commas outside quotes."""
    items, current, quote = [], "", None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        current += char
    return [*items, current]


class Refused(BaseException):
    """A UserError raised in a Hydra callback, which Hydra would turn into a warning and go on: as a
    BaseException it stops the command, and hydra_command's main reports the error in it."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


class RunFolderLock(Callback):
    """Holds the run folder (a sweep's folder) from before Hydra writes .hydra/ into it until the command
    ends, so a second command on the same folder stops in one line instead of overwriting the first one's
    config, checkpoints and summary. Only the first process of a distributed run holds it."""

    # What this process holds; released when the command ends, however it ends (hydra_command's main).
    held = contextlib.ExitStack()

    def __init__(self, hold: bool = True, one_sweep: bool = True):
        self.hold = hold
        # Whether a sweep folder holds one sweep (train's); a tune continues in its folder by design.
        self.one_sweep = one_sweep

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        folder = OmegaConf.select(config, "hydra.run.dir")
        # A run folder that holds another run is refused before Hydra writes this run's config into it.
        self.take(folder, "hydra.run.dir", lambda: check_folder_is_this_runs(
            Path(folder), Path(folder) / "checkpoints", config.get("resume"), config.get("ckpt_path"), "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = OmegaConf.select(config, "hydra.sweep.dir")
        overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        self.take(folder, "hydra.sweep.dir", lambda: self.one_sweep and check_sweep_folder(Path(folder), overrides))

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
