"""Training: the Lightning module that wraps any model, its data, optimizer, callbacks and run.

Lightning loads torchmetrics, which imports transformers (for BERTScore) and matplotlib (for its plots)
whenever they are installed: over a second of every run's start-up, for metrics lmzoo never uses. Lightning is
therefore first imported here, with torchmetrics' checks for those two packages answering "not installed";
lmzoo imports them itself where it uses them (Hugging Face export and tokenizers, `lmzoo.plot`).
"""

from lmzoo.training.compat import packages_reported_missing

UNUSED_BY_TRAINING = ("transformers", "matplotlib")

with packages_reported_missing(UNUSED_BY_TRAINING):
    import lightning  # noqa: F401
