"""Loss, perplexity and bits per byte of a checkpoint on a whole validation split.

Every token of the split but the first is predicted exactly once, from non-overlapping windows of
the model's context taken in order, so the numbers are the same every time.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoint import describe_tokenizer, load_model, model_card
from lmzoo.data.bins import write_atomically
from lmzoo.data.module import open_tokens, window_batch
from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel, bits_per_byte


@torch.no_grad()
def split_loss(model: LanguageModel, tokens: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Mean cross-entropy in nats over every token of `tokens` but the first, and how many that is."""
    block_size = model.block_size
    full = (len(tokens) - 1) // block_size
    offsets = np.arange(full) * block_size
    batches = [(offsets[i : i + batch_size], block_size) for i in range(0, full, batch_size)]
    rest = len(tokens) - 1 - full * block_size
    if rest:
        batches.append((np.array([full * block_size]), rest))
    total = torch.zeros((), dtype=torch.float64)
    for batch_offsets, length in batches:
        x, y = (t.to(model.device) for t in window_batch(tokens, batch_offsets, length))
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double().cpu()
    return total.item() / (len(tokens) - 1), len(tokens) - 1


def data_config(cfg: DictConfig, ckpt: Path) -> DictConfig:
    """The data set to evaluate on: `data=...` from the command line, else the one the run trained on."""
    if cfg.get("data") is not None:
        return cfg.data
    run_config = ckpt.parent.parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        raise UserError(f"no training config beside {ckpt}; name the data set: data=NAME [data.path=FILE]")
    # Resolved in the run's own config, so its data folder and block size are the ones it trained with.
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(run_config).data, resolve=True))


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate cfg.ckpt on the validation split; print a table and write it as JSON beside the checkpoint."""
    ckpt = Path(cfg.ckpt).expanduser()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model, _, info = load_model(ckpt, device)
    print(model_card(model, info))
    datamodule = instantiate(data_config(cfg, ckpt), block_size=model.block_size, batch_size=cfg.batch_size)
    datamodule.prepare_data()
    meta = datamodule.meta
    if meta["tokenizer"] != info["tokenizer"]:
        raise UserError(
            f"data set {datamodule.name!r} is tokenized differently from the checkpoint; "
            f"evaluate on data the model was trained with ({describe_tokenizer(info['tokenizer'])})"
        )
    val = meta["splits"]["val"]
    loss, predicted = split_loss(model, open_tokens(datamodule.data_dir / "val.bin", meta["dtype"]), cfg.batch_size)
    result = {
        "checkpoint": str(ckpt),
        "data": datamodule.name,
        "split": "val",
        "tokens": predicted,
        "bytes": val["bytes"],
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": bits_per_byte(loss, val["tokens"] / val["bytes"]),
    }
    out = ckpt.with_name(f"{ckpt.stem}.eval.{datamodule.name}.json")
    write_atomically(out, (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    print(table(result))
    print(f"wrote {out}")
    return result


def table(result: dict) -> str:
    header = f"{'data':<20} {'split':<6} {'tokens':>12} {'loss':>8} {'perplexity':>11} {'bits/byte':>10}"
    row = (f"{result['data']:<20} {result['split']:<6} {result['tokens']:>12,} {result['loss']:>8.4f} "
           f"{result['perplexity']:>11.3f} {result['bits_per_byte']:>10.4f}")
    return f"{header}\n{row}"
