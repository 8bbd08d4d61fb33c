"""python -m lmzoo.train [model=...] [data=...] [trainer=...] [key=value ...]"""

import hydra
from omegaconf import DictConfig

from lmzoo.errors import report_user_errors
from lmzoo.training import train


@hydra.main(config_path="pkg://lmzoo.conf", config_name="train", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> float:
    return train(cfg)["best_val_loss"]


if __name__ == "__main__":
    main()
