"""python -m lmzoo.export ckpt=PATH out=DIR [merge=true]"""

import hydra
from omegaconf import DictConfig

from lmzoo.errors import report_user_errors
from lmzoo.interop import export_checkpoint


@hydra.main(config_path="pkg://lmzoo.conf", config_name="export", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    print(export_checkpoint(cfg.ckpt, cfg.out, cfg.merge))


if __name__ == "__main__":
    main()
