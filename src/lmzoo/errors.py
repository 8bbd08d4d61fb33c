"""User mistakes are reported as one line that names the fix, never as a traceback."""

import functools
import sys


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing file, a mismatched checkpoint."""


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
            sys.exit(2)

    return wrapper


def user_error_behind(error: BaseException | None) -> UserError | None:
    """The UserError that caused `error`, also when Hydra's instantiate wrapped it."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__
    return None
