"""lmzoo's Hydra configs. Importing them registers each architecture's config class as the node
`architecture/CLASS` (every field at its default), which the presets in model/ extend."""

from hydra.core.config_store import ConfigStore

from lmzoo.models.presets import architecture_defaults, architectures

for config_class in architectures():
    ConfigStore.instance().store(group="architecture", name=config_class.__name__,
                                 node=architecture_defaults(config_class))
