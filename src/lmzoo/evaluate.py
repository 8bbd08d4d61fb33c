"""python -m lmzoo.evaluate ckpt=PATH [data=NAME data.path=FILE]: loss, perplexity and bits per byte on validation."""

import hydra
from omegaconf import DictConfig

from lmzoo.errors import report_user_errors
from lmzoo.evaluation import evaluate


@hydra.main(config_path="pkg://lmzoo.conf", config_name="evaluate", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
