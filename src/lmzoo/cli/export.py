"""python -m lmzoo.export ckpt=PATH out=DIR [merge=true]"""

from omegaconf import DictConfig

from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.cli.hydra_command import hydra_command


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    print(export_checkpoint(cfg.ckpt, cfg.out, cfg.merge))
