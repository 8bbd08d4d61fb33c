"""python -m lmzoo.inspect ckpt=PATH: the model card and every hyper-parameter a checkpoint holds."""

import hydra
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoint import load_model, model_card
from lmzoo.errors import report_user_errors


@hydra.main(config_path="pkg://lmzoo.conf", config_name="inspect", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    print(describe(cfg.ckpt), end="")


def describe(ckpt: str) -> str:
    """The model card, then the checkpoint's architecture, hyper-parameters and training record as YAML."""
    model, _, info = load_model(ckpt)
    record = {
        "architecture": info["target"],
        "hyper_parameters": info["config"],
        "tokenizer": info["tokenizer"],
        "global_step": info["global_step"],
        "best_val_loss": info["best_val_loss"],
        "lmzoo_version": info["version"],
    }
    return model_card(model, info) + "\n" + OmegaConf.to_yaml(record)


if __name__ == "__main__":
    main()
