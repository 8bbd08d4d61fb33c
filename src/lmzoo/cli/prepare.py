"""python -m lmzoo.prepare data=NAME [data.path=FILE]: tokenize a corpus into train.bin, val.bin, test.bin,
meta.json."""

from hydra.utils import instantiate
from omegaconf import DictConfig

from lmzoo.cli.hydra_command import hydra_command
from lmzoo.data import prepare


@hydra_command("prepare")
def main(cfg: DictConfig) -> None:
    config = instantiate(cfg.data, _convert_="all")
    meta = prepare(config)
    splits = ", ".join(f"{name} {size.tokens:,} tokens" for name, size in meta.splits.items())
    print(f"{config.data_dir}: {splits}; vocab {meta.vocab_size:,} ({meta.dtype})")
