"""python -m lmzoo.inspect ckpt=PATH: the model card and every hyper-parameter a checkpoint holds."""

import hydra
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoint import load_model, model_card
from lmzoo.errors import report_user_errors


@hydra.main(config_path="pkg://lmzoo.conf", config_name="inspect", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> None:
    model, _, info = load_model(cfg.ckpt)
    print(model_card(model, info))
    record = {
        "architecture": info["target"],
        "hyper_parameters": info["config"],
        "tokenizer": info["tokenizer"],
        "global_step": info["global_step"],
        "best_val_loss": info["best_val_loss"],
        "lmzoo_version": info["version"],
    }
    print(OmegaConf.to_yaml(record), end="")


if __name__ == "__main__":
    main()
