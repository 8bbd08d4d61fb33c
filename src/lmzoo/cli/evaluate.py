"""python -m lmzoo.evaluate ckpt=PATH [data=NAME data.path=FILE]: loss, perplexity and bits per byte on validation."""

import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.load import load_model, model_card
from lmzoo.cli.hydra_command import hydra_command
from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.inference.evaluation import evaluate, table


@hydra_command("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


def data_config(cfg: DictConfig, ckpt: Path) -> DictConfig:
    """The data set to evaluate on: `data=...` from the command line, else the one the run trained on."""
    if cfg.get("data") is not None:
        return cfg.data
    run_config = ckpt.parent.parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        raise UserError(f"no training config beside {ckpt}; name the data set: data=NAME [data.path=FILE]")
    # Resolved in the run's own config, so its data folder and block size are the ones it trained with.
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(run_config).data, resolve=True))


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate cfg.ckpt on the validation split; print a table and write it as JSON beside the checkpoint."""
    ckpt = Path(cfg.ckpt).expanduser()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model, _, info = load_model(ckpt, device)
    print(model_card(model, info))
    data = instantiate(data_config(cfg, ckpt), block_size=model.block_size, batch_size=cfg.batch_size, _convert_="all")
    result = {"checkpoint": str(ckpt), **evaluate(model, info["tokenizer"], data, cfg.batch_size)}
    out = ckpt.with_name(f"{ckpt.stem}.eval.{data.name}.json")
    write_atomically(out, (json.dumps(result, indent=2) + "\n").encode("utf-8"),
                     "make the checkpoint's folder writable")
    print(table(result))
    print(f"wrote {out}")
    return result
