"""Where the commands lean on Hydra's internals, each in one place, with the release it was written against.

tests/test_compat.py checks each against the installed Hydra, so an upgrade that changes one fails there first.
"""

import contextlib
import re
import traceback

from hydra.core.utils import JobReturn
from hydra.errors import MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

# hydra-core 1.3: a failed job's exception is kept in the private JobReturn._return_value (the public
# return_value re-raises it); some composition errors differ from the others only in their wording, others are told
# by the attributes of Hydra's and OmegaConf's exceptions; the parser of Hydra's flags is private.
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
    section = instantiated_section(message)
    target = re.search(r"Error in call to target '([\w.]+)'", message)
    return (section, target.group(1)) if section and target else None


def unlocatable_target(message: str) -> str | None:
    """The `_target_` an InstantiationException's message says Hydra could not import; None for any other."""
    found = re.match(r"Error locating target '([^']*)'", message)
    return found and found.group(1)


def uncallable_target(message: str) -> str | None:
    """What an InstantiationException's message says a `_target_` imported that is neither class nor function (a
    module: `_target_=abc` imports Python's abc); None for any other."""
    found = re.match(r"Expected a callable target, got '.*' of type '([^']*)'", message)
    return found and f"a {found.group(1)}"


def instantiated_section(message: str) -> str | None:
    """The config key an InstantiationException's message names (full_key: KEY); None when it names none."""
    found = re.search(r"full_key: (\S+)", message)
    return found and found.group(1)


def flags_parser():
    """Hydra's parser of its command-line flags (--cfg, -m, ...), which hydra.main uses (hydra-core 1.3: private)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


@contextlib.contextmanager
def mode_not_probed():
    """hydra-core 1.3's _run_hydra composes the whole config once only to read hydra.mode (Hydra.get_mode), then
    composes it again to run: while this holds, get_mode answers what it answers for a config that leaves
    hydra.mode unset, None (then -m alone decides, as before), without the first composition (0.09 s of `generate`
    on a 2-core Zen 4, bench/README.md)."""
    from hydra._internal.hydra import Hydra

    get_mode = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = get_mode


def modes_given(flags) -> list[str]:
    """The flags among Hydra's parsed `flags` that each choose what the command does (hydra-core 1.3's _run_hydra
    counts them and takes only one), as typed."""
    given = {"--run": flags.run, "-m": flags.multirun, f"--cfg {flags.cfg}": flags.cfg is not None,
             f"--info {flags.info}": flags.info is not None, "--shell-completion": flags.shell_completion}
    return [flag for flag, present in given.items() if present]


def unexpected_keyword(error: BaseException | None) -> str | None:
    """The keyword a class was called with and does not take, from Python's TypeError (as instantiating a
    dataclass with a key added by `+section.key=...` raises it); None for any other error."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error)) if isinstance(error, TypeError) else None
    return found and found.group(1)


def missing_argument(error: BaseException | None) -> str | None:
    """The argument a class was called without and needs, from Python's TypeError (as instantiating a dataclass
    whose required key `~section.key` deleted raises it); None for any other error."""
    found = re.search(r"missing \d+ required (?:keyword-only |positional )?arguments?: '(\w+)'",
                      str(error)) if isinstance(error, TypeError) else None
    return found and found.group(1)


def missing_option(error: BaseException) -> tuple[str, str, list[str]] | None:
    """The group and option of an override GROUP=OPTION naming no file of the group, and the group's options, from
    Hydra's MissingConfigException; None for any other error."""
    if not isinstance(error, MissingConfigException) or error.options is None:
        return None
    group, _, option = (error.missing_cfg_file or "").rpartition("/")
    return group, option, list(error.options)


def missing_key(error: BaseException) -> tuple[str, str, list[str]] | None:
    """The section and key of an override of a key the config does not have, and the section's keys, from the
    OmegaConf error Hydra raises it from; None for any other error."""
    cause = error.__cause__
    if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return None
    section, _, key = (cause.full_key or cause.key or "").rpartition(".")
    keys = [str(k) for k in cause.parent_node.keys()] if cause.parent_node is not None else []
    return section, key, keys


def raised_by_launcher(error: BaseException) -> bool:
    """Whether `error` is a sweep launcher's own (its settings, its start-up), raised before or between the jobs: in
    hydra-core 1.3 a Launcher's launch runs each job through hydra.core.utils.run_job, which keeps a job's error
    for the sweeper to raise later, so a launcher's own error is raised inside launch and outside run_job."""
    from hydra.plugins.launcher import Launcher

    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    in_launch = any(f.f_code.co_name == "launch" and isinstance(f.f_locals.get("self"), Launcher) for f in frames)
    in_job = any(f.f_code.co_name == "run_job" and f.f_globals.get("__name__") == "hydra.core.utils" for f in frames)
    return in_launch and not in_job


def raised_applying_override(error: BaseException) -> bool:
    """Whether `error` came from hydra-core 1.3 applying a command-line override to the composed config (OmegaConf's
    update raises a plain ValueError for a key into a list that is not an index, such as ++stop.name=x)."""
    return any(frame.f_code.co_name == "_apply_overrides_to_config"
               and frame.f_globals.get("__name__") == "hydra._internal.config_loader_impl"
               for frame, _ in traceback.walk_tb(error.__traceback__))
