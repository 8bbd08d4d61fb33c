"""What a config's `_target_` names, looked up without building it. Kept apart from the checks, whose imports
(Lightning's among them) the commands that only report a mistake would otherwise pay for at start-up."""

import logging

from hydra.utils import get_class


def named_class(path: str) -> type | None:
    """The class a `_target_` names, or None where it names none (nothing, or a module or function): Hydra's
    get_class without the error line it logs before it raises, where lmzoo has its own one line to say."""
    hydra_utils = logging.getLogger("hydra.utils")
    disabled, hydra_utils.disabled = hydra_utils.disabled, True
    try:
        return get_class(path)
    except (ImportError, ValueError, AttributeError):
        return None
    finally:
        hydra_utils.disabled = disabled
