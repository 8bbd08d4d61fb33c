"""A callback for bench/startup.py: writes the wall-clock time at which training starts its first step.

    python -m lmzoo.train ... +callbacks.first_step._target_=first_step.FirstStepClock +callbacks.first_step.path=FILE

(with bench/ on PYTHONPATH). It is not part of lmzoo: the bench adds it to the user's command line, so the
command measured is the user's own plus this one hook.
"""

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class FirstStepClock(Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and not self.path.exists():
            self.path.write_text(repr(time.time()))
