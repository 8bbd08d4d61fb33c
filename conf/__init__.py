"""lmzoo's Hydra configs. Importing them registers, for each class a config group builds, a node holding every
setting at its class's default, which the group's options extend (`defaults: [/GROUP/CLASS@_here_, _self_]`):
an option's file holds only what it sets otherwise, and the composed config (`--cfg job`) every value.

- `architecture/CLASS`: each architecture's config, which model/'s presets extend (lmzoo.models.presets);
- `settings/CLASS`: OptimConfig (optim/), DataConfig (data/), each synthetic task's config (data/mqar and the
  others, lmzoo.data.tasks), LoRA (finetune/) and TuneSettings (tune/), with the settings that follow the run's own
  wired to them (the schedule's length to trainer.max_steps, the data's block size, seed and folder to the run's).
"""

import dataclasses
import inspect

from hydra.core.config_store import ConfigStore

from lmzoo.data import DataConfig
from lmzoo.data.tasks import TASKS
from lmzoo.models.lora import LoRA
from lmzoo.models.presets import architecture_defaults, architectures
from lmzoo.training.optim import OptimConfig
from lmzoo.training.search import TuneSettings

# The setting of a class that follows another key of the config, by class.
WIRED = {
    OptimConfig: {"decay_steps": "${trainer.max_steps}"},
    # The package's name for it, as runs have recorded it.
    DataConfig: {"_target_": "lmzoo.data.DataConfig", "root": "${paths.data_dir}", "block_size": "${block_size}",
                 "seed": "${seed}"},
    # A synthetic task's examples are as long as the run's context, drawn from its seed.
    **{task: {"block_size": "${block_size}", "seed": "${seed}"} for task in TASKS.values()},
}


def settings_node(target: type, wired: dict) -> dict:
    """The config node of `target`: its `_target_` (none for TuneSettings, which lmzoo reads itself) and each
    setting it takes at its default, '???' where it has none (a required key), `wired` ones as given."""
    if dataclasses.is_dataclass(target):
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else "???"
                    for f in dataclasses.fields(target) if f.init}
    else:
        defaults = {name: "???" if p.default is inspect.Parameter.empty else p.default
                    for name, p in inspect.signature(target).parameters.items()}
    node = {} if target is TuneSettings else {"_target_": f"{target.__module__}.{target.__qualname__}"}
    return {**node, **{key: list(value) if isinstance(value, tuple) else value
                       for key, value in {**defaults, **wired}.items()}}


for config_class in architectures():
    ConfigStore.instance().store(group="architecture", name=config_class.__name__,
                                 node=architecture_defaults(config_class))
for settings_class in (OptimConfig, DataConfig, *TASKS.values(), LoRA, TuneSettings):
    ConfigStore.instance().store(group="settings", name=settings_class.__name__,
                                 node=settings_node(settings_class, WIRED.get(settings_class, {})))
