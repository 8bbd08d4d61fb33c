"""python -m lmzoo.train [model=...] [data=...] [trainer=...] [key=value ...]"""

from omegaconf import DictConfig

from lmzoo.cli.folders import write_command_record
from lmzoo.cli.hydra_command import hydra_command


@hydra_command("train")
def main(cfg: DictConfig) -> float:
    # Imported here so that a mistake on the command line is reported before Lightning loads.
    from lmzoo.training.run import train

    return train(cfg, accepted=lambda: write_command_record(cfg))["best_val_loss"]
