"""Training: the Lightning module that wraps any model, its data, optimizer, callbacks and run.

Lightning loads torchmetrics, which imports transformers (for BERTScore) and matplotlib (for its plots)
whenever they are installed: over a second of every run's start-up, for metrics lmzoo never uses. Lightning is
therefore first imported here, with torchmetrics' checks for those two packages answering "not installed";
lmzoo imports them itself where it uses them (Hugging Face export and tokenizers, `lmzoo.plot`).
"""

import contextlib
import re

from lightning_utilities.core.imports import RequirementCache

UNUSED_BY_TRAINING = ("transformers", "matplotlib")


@contextlib.contextmanager
def packages_reported_missing(names: tuple[str, ...]):
    """While open, lightning_utilities' RequirementCache (what torchmetrics checks) finds none of `names`."""
    check = RequirementCache._check_requirement

    def check_unless_named(self):
        if re.split(r"[^A-Za-z0-9_.-]", self.requirement, maxsplit=1)[0] in names:
            self.available, self.message = False, f"{self.requirement!r} is not loaded by lmzoo's training"
        else:
            check(self)

    RequirementCache._check_requirement = check_unless_named
    try:
        yield
    finally:
        RequirementCache._check_requirement = check


with packages_reported_missing(UNUSED_BY_TRAINING):
    import lightning  # noqa: F401
