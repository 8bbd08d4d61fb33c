"""python -m lmzoo.describe ckpt=PATH: the model card and every hyper-parameter a checkpoint holds."""

from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.load import load_model, model_card
from lmzoo.cli.hydra_command import hydra_command


@hydra_command("describe", literal=("ckpt",))
def main(cfg: DictConfig) -> None:
    print(describe(cfg.ckpt), end="")


def describe(ckpt: str) -> str:
    """The model card and the model's own lines (its shape, its KV cache), then the checkpoint's architecture,
    hyper-parameters and training record as YAML."""
    model, _, record = load_model(ckpt, diverged=True)
    described = {
        "architecture": record.architecture,
        "hyper_parameters": record.config,
        "optim": record.optim,
        "tokenizer": record.tokenizer,
        "global_step": record.global_step,
        "best_val_loss": record.best_val_loss,
        "lmzoo_version": record.version,
    }
    if record.origin is not None:
        described["origin"] = record.origin
    return "\n".join([model_card(model, record), *model.describe()]) + "\n" + OmegaConf.to_yaml(described)
