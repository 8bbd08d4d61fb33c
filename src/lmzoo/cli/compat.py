"""Where the commands lean on Hydra's internals, each in one place, with the release it was written against.

tests/test_compat.py checks each against the installed Hydra, so an upgrade that changes one fails there first.
"""

import re

from hydra.core.utils import JobReturn

# hydra-core 1.3: a failed job's exception is kept in the private JobReturn._return_value (the public
# return_value re-raises it); some composition errors differ from the others only in their wording.
HYDRA = "1.3"


def job_error(job_return: JobReturn) -> BaseException:
    """The exception that failed a sweep job, without raising it."""
    return job_return._return_value


# hydra-core 1.3: JobReturn.return_value writes this line to stderr as it re-raises a failed job's error at the end
# of a sweep; lmzoo's own line follows, and the sweep's comparison names every failed job.
FAILED_JOB_LINE = "Error executing job with overrides: "


class WithoutFailedJobLines:
    """sys.stderr, less Hydra's FAILED_JOB_LINE (one write call each)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return len(text) if text.startswith(FAILED_JOB_LINE) else self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def group_not_in_defaults(message: str) -> str | None:
    """The config group of an override `GROUP=OPTION` whose command has no such group in its defaults list, from
    the first line of Hydra's ConfigCompositionException; None for any other message."""
    found = re.match(r"Could not override '([^']+)'\. No match in the defaults list", message)
    return found and found.group(1)


def is_ambiguous_value(message: str) -> bool:
    """Whether Hydra's ConfigCompositionException says a value holds spaces or commas it cannot read unquoted."""
    return message.startswith("Ambiguous value")


def not_an_override(message: str) -> str | None:
    """The argument that Hydra's OverrideParseException could not parse because it holds no '=' (nor is a
    deletion `~key`); None for any other message."""
    found = re.match(r"Error parsing override '(.*)'$", message)
    if found and "=" not in found.group(1) and not found.group(1).startswith("~"):
        return found.group(1)
    return None


def failed_instantiation(message: str) -> tuple[str, str] | None:
    """The config key and the `_target_` of an InstantiationException's message; None when it names neither."""
    section = re.search(r"full_key: (\S+)", message)
    target = re.search(r"Error in call to target '([\w.]+)'", message)
    return (section.group(1), target.group(1)) if section and target else None
