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


def group_not_in_defaults(message: str) -> str | None:
    """The config group of an override `GROUP=OPTION` whose command has no such group in its defaults list, from
    the first line of Hydra's ConfigCompositionException; None for any other message."""
    found = re.match(r"Could not override '([^']+)'\. No match in the defaults list", message)
    return found and found.group(1)


def is_ambiguous_value(message: str) -> bool:
    """Whether Hydra's ConfigCompositionException says a value holds spaces or commas it cannot read unquoted."""
    return message.startswith("Ambiguous value")
