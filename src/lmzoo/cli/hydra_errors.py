"""Hydra's and OmegaConf's errors as lmzoo's one line, `error: ...`, naming the fix.

Hydra reports a bad override in several lines (and a page of grammar for a bad value), and its flags' mistakes as
argparse's usage page. lmzoo asks Hydra for its errors as exceptions (HYDRA_FULL_ERROR=1 while the command
runs) and translates them here; a user's own HYDRA_FULL_ERROR=1 still shows Hydra's whole text. The wording they
are recognised by is read in lmzoo.cli.compat, pinned by tests/test_compat.py.
"""

import contextlib
import dataclasses
import os

from hydra.errors import InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError

from lmzoo.cli.compat import (failed_instantiation, flags_parser, group_not_in_defaults, instantiated_section,
                              is_ambiguous_value, missing_argument, missing_key, missing_option, modes_given,
                              not_an_override, uncallable_target, unexpected_keyword, unlocatable_target)
from lmzoo.errors import UserError, nearest
from lmzoo.models.presets import moved_keys
from lmzoo.training.provenance import flatten
from lmzoo.training.targets import named_class


@contextlib.contextmanager
def hydra_errors_raised():
    """While open, Hydra raises its errors instead of printing them; yields whether the user asked for its whole
    text (HYDRA_FULL_ERROR=1), in which case they are not translated."""
    asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield asked == "1"
    finally:
        if asked is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


def check_flags(args: list[str], command: str) -> None:
    """Hydra's flags (--cfg job, -m, ...) as Hydra parses them, but a mistake in them is one line, not argparse's
    usage page."""

    def refuse(message: str):
        raise UserError(f"{message}; see python -m lmzoo.{command} --help")

    parser = flags_parser()
    parser.error = refuse
    modes = modes_given(parser.parse_args(args))
    if len(modes) > 1:
        refuse(f"{' and '.join(modes)} cannot be given together, as each chooses what the command does; keep one "
               "(--cfg job shows the config of the command without -m)")


def explain(error: Exception, command: str) -> str:
    """One line for an error Hydra met while composing the config."""
    if option := missing_option(error):
        group, name, options = option
        return f"{group}={name} is not an option; choose one of {', '.join(options)}{nearest(name, options)}"
    if key := missing_key(error):
        section, name, keys = key
        if section == "model" and (moved := moved_keys(name)):
            return f"model.{name} is a knob of the parts that have it now: set {' or '.join(moved)}"
        keys = [k for k in keys if k not in ("hydra", "_target_")]
        hint = nearest(name, keys) or (f"; its keys are {', '.join(keys)}" if keys else "; it has no keys to set")
        return f"{section or 'the config'} has no key {name}{hint}"
    first = str(error).strip().splitlines()[0]
    if group := group_not_in_defaults(first):
        return f"there is no option group {group}; see python -m lmzoo.{command} --help for the groups"
    if (argument := not_an_override(first)) is not None:
        return f"{argument!r} is not an override: write KEY=VALUE, such as model=gpt_rope (see python -m lmzoo.{command} --help)"
    if isinstance(error, OverrideParseException) or is_ambiguous_value(first):
        return f"{first.rstrip('.')}: quote a value that holds spaces, commas, brackets or '=': key='value'"
    return first


def instantiation_error(error: InstantiationException, typed: dict[str, str]) -> UserError | None:
    """A config section Hydra could not build for a reason in the config itself, as one line: a section the
    command line put in place (typed_section; `typed`: each key it set, with its value as typed), a key its class
    does not take (unknown_key) or needs and lacks (needed_key), or a `_target_` that imports nothing or no class
    (a module); None for an error raised inside the class."""
    if explained := typed_section(error, typed) or unknown_key(error) or needed_key(error):
        return explained
    target, imported = unlocatable_target(str(error)), uncallable_target(str(error))
    if target is None and imported is None:
        return None
    section = instantiated_section(str(error))
    key = f"{section}._target_" if section else "_target_"
    given = f"={target} names no class lmzoo can import" if target else f" imports {imported}, not a class"
    return UserError(f"{key}{given}; leave {key} as the config has it (choose another {section or 'option'} with "
                     f"{section or 'GROUP'}=OPTION)")


def typed_section(error: InstantiationException, typed: dict[str, str]) -> UserError | None:
    """A section Hydra could not build because an override put it there, as one line naming that override: a
    `_target_` of a class that takes other keys (`optim._target_=lmzoo.models.lora.LoRA`), or an interpolation of
    a whole section in place of a value (`data.batch_size=${model}`)."""
    failed = failed_instantiation(str(error))
    if failed is None:
        return None
    section = failed[0]
    target = f"{section}._target_"
    if target in typed:
        group = section.split(".")[0]
        return UserError(f"{target}={typed[target]} cannot build {section} (its class takes other keys); leave "
                         f"{target} as the config has it (choose another {group} with {group}=OPTION)")
    if typed.get(section, "").lstrip().startswith("${"):
        return UserError(f"{section}={typed[section]} puts a whole section of the config where a value goes; set "
                         f"{section}=VALUE, or interpolate a key that holds a value, as ${{block_size}}")
    return None


def unresolved(error: InterpolationResolutionError, cfg: DictConfig) -> UserError:
    """An interpolation that does not resolve (`model.n_layer=${oops}`), as one line naming its key: the error's,
    or the first key of `cfg` that does not resolve (Hydra's instantiate drops the key from the error)."""
    values = flatten(OmegaConf.to_container(cfg, resolve=False))
    key = error.full_key or next((key for key in values if not resolves(cfg, key)), None)
    reason = str(error).strip().splitlines()[0].rstrip(".")
    typed = f"{key}={values[key]}" if key in values else key or "an interpolation"
    return UserError(f"{typed} does not resolve ({reason}); interpolate a key the config has, as ${{block_size}}, or "
                     "write the value itself")


def resolves(cfg: DictConfig, key: str) -> bool:
    try:
        OmegaConf.select(cfg, key)
    except InterpolationResolutionError:
        return False
    return True


def deleted_key(error: KeyError | ConfigAttributeError, deleted: dict[str, str]) -> UserError | None:
    """A key the command needs that the command line deleted (`deleted`: each key with its override, `~seed` or
    `finetune=[]`), as one line; None for any other. OmegaConf names it in its errors; a plain KeyError is a key
    missing from a config read as a dict."""
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        key = error.full_key or str(error.key or "")
    else:
        key = str(error.args[0]) if error.args else ""
    gone = next((gone for gone in deleted if key == gone or key.startswith(f"{gone}.")), None) if key else None
    if gone is None:
        return None
    return UserError(f"{key} is needed, and {deleted[gone]} deleted it; leave it out, or set {key}=VALUE")


def needed_key(error: InstantiationException) -> UserError | None:
    """A key a section's class needs that the config lacks (deleted with `~section.key`), as one line."""
    key = missing_argument(error.__cause__)
    failed = failed_instantiation(str(error))
    if not (key and failed):
        return None
    return UserError(f"{failed[0]}.{key} is needed and the config has none; leave it as the config has it, or set "
                     f"{failed[0]}.{key}=VALUE")


def unknown_key(error: InstantiationException) -> UserError | None:
    """A key added with `+section.key=...` that the section's class does not take, as one line naming its keys."""
    key = unexpected_keyword(error.__cause__)
    failed = failed_instantiation(str(error))
    if not (key and failed):
        return None
    section, target = failed
    cls = named_class(target)
    keys = [field.name for field in dataclasses.fields(cls) if field.init] if dataclasses.is_dataclass(cls) else []
    hint = nearest(key, keys) or (f"; its keys are {', '.join(keys)}" if keys else "")
    return UserError(f"{section} has no key {key}{hint}")

