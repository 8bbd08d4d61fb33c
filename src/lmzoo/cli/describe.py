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
    model, _, info = load_model(ckpt)
    record = {
        "architecture": info["architecture"],
        "hyper_parameters": info["config"],
        "optim": info.get("optim"),
        "tokenizer": info["tokenizer"],
        "global_step": info.get("global_step"),
        "best_val_loss": info.get("best_val_loss"),
        "lmzoo_version": info.get("version"),
    }
    if "origin" in info:
        record["origin"] = info["origin"]
    return "\n".join([model_card(model, info), *model.describe()]) + "\n" + OmegaConf.to_yaml(record)
