"""User mistakes are reported as one line that names the fix, never as a traceback."""

import dataclasses
import difflib
import functools
import sys
import types
import typing


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing file, a mismatched checkpoint."""

    exit_status = 2


class Interrupted(UserError):
    """Ctrl-C while lmzoo was working; the message says what was kept. Exits as a process killed by SIGINT does."""

    exit_status = 130


def report_user_errors(main):
    """Wrap an entry point so that a UserError prints `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:
            cause = user_error_behind(error)
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(cause.exit_status)
        except KeyboardInterrupt:
            # Every file lmzoo writes is written atomically, so stopping anywhere leaves no half-written file.
            print("error: stopped by Ctrl-C; files being written were discarded and earlier ones kept", file=sys.stderr)
            sys.exit(Interrupted.exit_status)

    return wrapper


def user_error_behind(error: BaseException | None) -> UserError | None:
    """The UserError that caused `error`, also when Hydra's instantiate wrapped it."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__
    return None


def nearest(word: str, candidates: list[str]) -> str:
    """" (did you mean KEY?)" for the candidate nearest to a mistyped `word`, or "" when none is near."""
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_field_types(config, section: str | None) -> None:
    """Refuse a dataclass whose values do not have their annotated types, naming `section.key` (`key` when
    the keys are at the top of the command line's config).

    Configs come from the command line, where `model.n_layer=abc` is a string: without this check it
    would fail deep inside torch.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if field.init:
            value = getattr(config, field.name)
            if not matches(value, hints[field.name]):
                key = f"{section}.{field.name}" if section else field.name
                raise UserError(f"{key} must be {describe_type(hints[field.name])}, got {value!r}")


def matches(value, annotation) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def describe_type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (tuple, list):
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
