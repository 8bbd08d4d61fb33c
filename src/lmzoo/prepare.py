"""python -m lmzoo.prepare data=NAME [data.path=FILE]: tokenize a corpus into train.bin, val.bin, meta.json."""

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmzoo.errors import report_user_errors


@hydra.main(config_path="pkg://lmzoo.conf", config_name="prepare", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    meta = datamodule.meta
    splits = ", ".join(f"{name} {info['tokens']:,} tokens" for name, info in meta["splits"].items())
    print(f"{datamodule.data_dir}: {splits}; vocab {meta['vocab_size']:,} ({meta['dtype']})")


if __name__ == "__main__":
    main()
