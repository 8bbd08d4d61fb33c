"""Training: the Lightning module that wraps any model, its data, optimizer, callbacks and run.

Lightning loads torchmetrics, which imports transformers (for BERTScore) and matplotlib (for its plots)
whenever they are installed: over a second of every run's start-up, for metrics lmzoo never uses. Importing this
package therefore makes Lightning's first import, whenever and wherever it comes, run with torchmetrics' checks
for those two packages answering "not installed" (lmzoo.training.compat.LightningWithout); lmzoo imports them
itself where it uses them (Hugging Face export and tokenizers, `lmzoo.plot`). The modules of this package that
need no Lightning (the optimizer's settings, a run's summary) load without it, so the configs and the reports
can read them.
"""

from lmzoo.training.compat import LightningWithout

UNUSED_BY_TRAINING = ("transformers", "matplotlib")

LightningWithout.install(UNUSED_BY_TRAINING)
