"""Entry points on Hydra: a config from conf/ composed with the command line, and every mistake one line.

Hydra reports a bad override in several lines (and a page of grammar for a bad value). lmzoo asks Hydra
for its errors as exceptions and prints one line, `error: ...`, naming the fix, with exit status 2;
HYDRA_FULL_ERROR=1 still shows Hydra's whole text.
"""

import difflib
import functools
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from lmzoo.errors import UserError, report_user_errors


def hydra_command(config_name: str):
    """Turn `task(cfg)` into a command line whose config is conf/CONFIG_NAME.yaml plus the arguments."""

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
            asked = os.environ.get("HYDRA_FULL_ERROR")
            # Hydra then raises its errors instead of printing them.
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return run()
            except (HydraException, OmegaConfBaseException) as error:
                if asked == "1" or running:
                    raise
                print(f"error: {explain(error)}", file=sys.stderr)
                sys.exit(2)
            finally:
                if asked is None:
                    del os.environ["HYDRA_FULL_ERROR"]
                else:
                    os.environ["HYDRA_FULL_ERROR"] = asked

        return main

    return decorate


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def explain(error: Exception) -> str:
    """One line for an error Hydra met while composing the config."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        return f"{group}={option} is not an option; choose one of {', '.join(error.options)}{nearest(option, error.options)}"
    if isinstance(cause, ConfigKeyError) or type(cause).__name__ == "ConfigAttributeError":
        section, _, key = (cause.full_key or cause.key or "").rpartition(".")
        keys = [str(k) for k in cause.parent_node.keys()] if cause.parent_node is not None else []
        where = section or "the config"
        hint = nearest(key, keys) or (f"; its keys are {', '.join(keys)}" if keys else "")
        return f"{where} has no key {key}{hint}"
    first = str(error).strip().splitlines()[0]
    if "Could not override" in first and "No match in the defaults list" in first:
        group = first.split("'")[1]
        return f"there is no option group {group}; see python -m lmzoo.train --help for the groups"
    if type(error).__name__ == "OverrideParseException" or first.startswith("Ambiguous value"):
        return f"{first.rstrip('.')}: quote a value that holds spaces, commas, brackets or '=': key='value'"
    return first


def nearest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
