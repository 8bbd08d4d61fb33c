"""Where training leans on library internals, each in one place, with the releases it was written against.

tests/test_compat.py checks each against the installed libraries, so an upgrade that changes one fails there
first. Imports no Lightning: lmzoo.training imports this before it first loads Lightning.
"""

import contextlib
import importlib.abc
import importlib.util
import re
import sys
import warnings

# lightning-utilities 0.15 (Lightning 2.6): RequirementCache, which torchmetrics asks whether a package is
# installed, finds out in its private _check_requirement; there is no public way to answer for it.
LIGHTNING_UTILITIES = "0.15"
# Lightning 2.6: the rule by which the Trainer writes a training step's logged values to its loggers, which
# Lightning's own callbacks (LearningRateMonitor, ThroughputMonitor) also read, is private; so is the
# _AcceleratorConnector, which turns the Trainer's accelerator, devices and num_nodes into its devices.
LIGHTNING = "2.6"
# torch 2.13: LambdaLR keeps its multiplier in the undocumented lr_lambdas, and saves a multiplier object's
# attributes in its state_dict: what lets a run change its schedule's length and resume it.
TORCH = "2.13"

# Lightning 2.6 builds a torch LeafSpec on every step of its loops, which torch 2.13 deprecates: a warning per run
# that says nothing about it.
LEAF_SPEC_WARNING = r".*isinstance\(treespec, LeafSpec\)"
warnings.filterwarnings("ignore", message=LEAF_SPEC_WARNING)


@contextlib.contextmanager
def packages_reported_missing(names: tuple[str, ...]):
    """While open, lightning_utilities' RequirementCache (what torchmetrics checks) finds none of `names`."""
    # Imported here: lmzoo.training imports this module, and its modules that need no Lightning load without it.
    from lightning_utilities.core.imports import RequirementCache

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


class LightningWithout(importlib.abc.MetaPathFinder):
    """An import hook: Lightning's first import, by whichever module asks for it, runs inside
    packages_reported_missing(names). Python's own finder finds the package; only its loading is wrapped."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    @classmethod
    def install(cls, names: tuple[str, ...]) -> None:
        """Wrap Lightning's first import, unless it has happened (then nothing can be done about it)."""
        if "lightning" not in sys.modules and not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls(names))

    def find_spec(self, name, path=None, target=None):
        if name != "lightning":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = LoadedWithout(spec.loader, self.names)
        return spec


class LoadedWithout(importlib.abc.Loader):
    """A module's loader whose loading runs inside packages_reported_missing(names); otherwise the loader itself."""

    def __init__(self, loader, names: tuple[str, ...]):
        self.loader, self.names = loader, names

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with packages_reported_missing(self.names):
            self.loader.exec_module(module)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def logs_this_step(trainer) -> bool:
    """Whether the Trainer writes this training step's logged values to its loggers: on every
    trainer.log_every_n_steps-th optimizer step (counted from 1), on a step after which the run is told to stop,
    and on the run's last step (trainer.max_steps), which lmzoo's ValidateAtEnd tells it to stop after, so that a
    curve reaches the end of the run. The step is the same in its training_step, before the optimizer steps, and
    in on_train_batch_end, after it, on each of its micro-batches."""
    step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
    return trainer._logger_connector.should_update_logs or 0 < trainer.max_steps == step


def lr_multiplier(scheduler):
    """The multiplier object a LambdaLR scheduler was made with (lmzoo's Schedule)."""
    return scheduler.lr_lambdas[0]


def device_count(accelerator, devices, num_nodes: int = 1) -> int:
    """The processes a Trainer of these settings trains on, all nodes together (Trainer.num_devices x
    Trainer.num_nodes), as Lightning counts them, before any Trainer is built. Settings Lightning refuses raise
    its MisconfigurationException."""
    from lightning.pytorch.strategies import ParallelStrategy
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    # The strategy does not change the count: "auto" spares building one (FSDP's needs a GPU).
    strategy = _AcceleratorConnector(devices=devices, num_nodes=num_nodes, accelerator=accelerator).strategy
    per_node = len(strategy.parallel_devices) if isinstance(strategy, ParallelStrategy) else 1
    return per_node * getattr(strategy, "num_nodes", 1)
