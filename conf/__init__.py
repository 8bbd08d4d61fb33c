"""lmzoo's Hydra configs. Importing them registers each architecture's config class as the node
`architecture/CLASS` (every field at its default), which the presets in model/ extend, and each synthetic task's
as `task/CLASS`, which data/NAME.yaml extends."""

from hydra.core.config_store import ConfigStore

from lmzoo.data.tasks import TASKS, task_defaults
from lmzoo.models.presets import architecture_defaults, architectures

for config_class in architectures():
    ConfigStore.instance().store(group="architecture", name=config_class.__name__,
                                 node=architecture_defaults(config_class))

for config_class in TASKS.values():
    ConfigStore.instance().store(group="task", name=config_class.__name__, node=task_defaults(config_class))
