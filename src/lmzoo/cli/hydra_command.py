"""Entry points on Hydra: a config from conf/ composed with the command line, and every mistake one line.

Hydra's errors are translated by lmzoo.cli.hydra_errors, the values of a command's literal keys quoted by
lmzoo.cli.quoting, and who may write into a run or sweep folder is decided by lmzoo.cli.folders.
"""

import contextlib
import functools
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import (ConfigAttributeError, InterpolationResolutionError, MissingMandatoryValue,
                              OmegaConfBaseException)

from lmzoo.cli.compat import WithoutFailedJobLines, mode_not_probed, raised_applying_override, raised_by_launcher
from lmzoo.cli.folders import Refused, RunFolderLock
from lmzoo.cli.hydra_errors import (check_flags, deleted_key, explain, hydra_errors_raised, instantiation_error,
                                   unresolved)
from lmzoo.cli.quoting import quote_literal_values
from lmzoo.errors import UserError, report_user_errors, user_error_behind


def job_gpu(job_number: int) -> list[int]:
    """The GPU of sweep job `job_number` (conf/trainer/gpu_per_job.yaml): one each, round robin over the GPUs."""
    import torch

    return [int(job_number) % max(1, torch.cuda.device_count())]


OmegaConf.register_new_resolver("lmzoo.job_gpu", job_gpu, replace=True)


def hydra_command(config_name: str, literal: tuple[str, ...] = (), mode_in_config: bool = False):
    """Turn `task(cfg)` into a command line whose config is conf/CONFIG_NAME.yaml plus the arguments; the
    values of the `literal` keys are taken as typed. `mode_in_config`: the config sets hydra.mode (tune's sweeps
    without -m), which Hydra then composes the config once more to read."""

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
            except InterpolationResolutionError as error:
                raise unresolved(error, cfg) from None
            except InstantiationException as error:
                explained = instantiation_error(error, typed_values())
                if explained is None:
                    raise
                raise explained from None
            except (KeyError, ConfigAttributeError) as error:
                explained = deleted_key(error, deleted_keys())
                if explained is None:
                    raise
                raise explained from None
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
            with hydra_errors_raised() as full_error:
                try:
                    probed = mode_may_be_set(sys.argv[1:], mode_in_config)
                    with (contextlib.redirect_stderr(WithoutFailedJobLines(sys.stderr)),
                          contextlib.nullcontext() if probed else mode_not_probed()):
                        return run()
                except (HydraException, OmegaConfBaseException) as error:
                    # A sweep ends by raising the error of a failed job, which may be a UserError Hydra wrapped.
                    if full_error or running or user_error_behind(error):
                        raise
                    print(f"error: {explain(error, config_name)}", file=sys.stderr)
                    sys.exit(2)
                except Refused as refused:
                    raise refused.error from None
                except OSError as error:
                    # Before the task: Hydra making the run folder.
                    if running:
                        raise
                    raise UserError(f"cannot write {error.filename} ({error.strerror or error}); "
                                    "choose a writable folder with hydra.run.dir=PATH") from None
                except Exception as error:
                    if not (full_error or running) and raised_applying_override(error):
                        first = f"{type(error).__name__}: {error}".splitlines()[0]
                        raise UserError(f"an override does not fit the config ({first}); the items of a list are set "
                                        "by their index, KEY.0=VALUE, or the whole list, KEY=[a,b]") from None
                    if full_error or not raised_by_launcher(error):
                        raise
                    # Launchers refuse as they start, before any job (joblib, submitit): the folder is left as it was.
                    launcher = RunFolderLock.put_back_sweep_record()
                    first = f"{type(error).__name__}: {error}".splitlines()[0]
                    raise UserError(f"hydra/launcher={launcher} cannot start the sweep ({first}); fix hydra.launcher.* "
                                    f"(conf/hydra/launcher/{launcher}.yaml) or choose another launcher") from None
                finally:
                    RunFolderLock.held.close()
                    RunFolderLock.sweep_before = None

        main.mode_in_config = mode_in_config
        return main

    return decorate


def mode_may_be_set(args: list[str], mode_in_config: bool) -> bool:
    """Whether hydra.mode may be set other than by -m: by the command's config, by an override, or by a config the
    command line chooses in place of the command's (Hydra's --config-name, --config-path, --config-dir)."""
    return mode_in_config or any(arg.lstrip("+~").startswith("hydra.mode") or arg.startswith(("-c", "--config"))
                                 for arg in args)


def typed_overrides() -> list[str]:
    """The command line's overrides as typed: an interpolation in one (`++KEY=${oops}`) is text here, not resolved."""
    return OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)


def typed_values() -> dict[str, str]:
    """The keys the command line set, each with its value as typed."""
    return dict(override.lstrip("+").partition("=")[::2] for override in typed_overrides()
                if not override.startswith("~"))


def deleted_keys() -> dict[str, str]:
    """The keys the command line may have deleted, each with the override that did: `~KEY`, and `GROUP=[]`, which
    selects none of a config group's options (for a key that is not a group, the value of an empty list)."""
    deleted = {}
    for override in typed_overrides():
        key, _, value = override.lstrip("+").partition("=")
        if override.startswith("~"):
            deleted[key[1:]] = override
        elif value.replace(" ", "") == "[]":
            deleted[key.replace("/", ".")] = override
    return deleted


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
