"""python -m lmzoo.export ckpt=PATH out=DIR [merge=true]"""

from omegaconf import DictConfig

from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.cli.hydra_command import hydra_command
from lmzoo.errors import UserError


@hydra_command("export", literal=("ckpt", "out"))
def main(cfg: DictConfig) -> None:
    if not isinstance(cfg.merge, bool):
        raise UserError(f"merge must be true or false, got {cfg.merge!r}")
    print(export_checkpoint(cfg.ckpt, cfg.out, cfg.merge))
