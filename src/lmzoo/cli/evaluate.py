"""python -m lmzoo.evaluate ckpt=PATH [data=NAME] [data.path=FILE] [split=val|test]: loss, perplexity and bits per
byte on the validation split, or the test split; on a synthetic task, loss and accuracy over its answers.

Without data=, the data set the checkpoint's run trained on; with only data.path=FILE, that text, tokenized
with the checkpoint's own tokenizer.
"""

import json
import math
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.load import load_model, model_card, resolve_device
from lmzoo.cli.hydra_command import hydra_command
from lmzoo.data import DataConfig
from lmzoo.data.tasks import TaskConfig
from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.inference.evaluation import EVALUATED_SPLITS, evaluate, table
from lmzoo.training.targets import named_class

# The data preset for any text: evaluated with the checkpoint's own tokenizer.
ANY_TEXT = "text"


@hydra_command("evaluate", literal=("ckpt",))
def run(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


def main() -> None:
    """Entry point: data.path=FILE (or any data.KEY) without data=NAME evaluates on that text (data=text)."""
    args = sys.argv[1:]
    if any(arg.lstrip("+").startswith("data.") for arg in args) and not any(
            arg.lstrip("+").startswith("data=") for arg in args):
        args = [f"data={ANY_TEXT}", *args]
    sys.argv = [sys.argv[0], *args]
    run()


def data_config(cfg: DictConfig, ckpt: Path, tokenizer_spec: dict) -> DictConfig:
    """The data set to evaluate on: `data=...` from the command line, else the one the run trained on."""
    if cfg.get("data") is not None:
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
        if data.get("name") == ANY_TEXT:
            data.tokenizer = tokenizer_spec
            # A path that is no string is DataConfig's to refuse, in its own words.
            path = data.get("path")
            if isinstance(path, str) and path and Path(path).expanduser().is_file():
                data.name = Path(path).stem
        return data
    run_config = ckpt.parent.parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        raise UserError(f"no training config beside {ckpt}; name the data: data.path=FILE or data=NAME")
    # Resolved in the run's own config, so its data folder and block size are the ones it trained with.
    try:
        return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(run_config).data, resolve=True))
    except Exception as error:
        # YAML's own errors, a config without data:, or one whose interpolations do not resolve.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{run_config} does not parse ({reason}); name the data: data.path=FILE or data=NAME") from None


def data_class(data: DictConfig) -> type:
    """The class `data` builds: lmzoo's DataConfig or a synthetic task's. Deleted, or naming another class, its
    `_target_` would build what evaluate cannot read a data set from."""
    target = data.get("_target_")
    cls = named_class(str(target)) if target is not None else None
    if not (cls is DataConfig or (isinstance(cls, type) and issubclass(cls, TaskConfig))):
        given = " is deleted" if target is None else f"={target} is not lmzoo.data.DataConfig"
        raise UserError(f"data._target_{given}, which evaluate reads a data set with; leave data._target_ as the "
                        "config has it, and name the data with data=NAME or data.path=FILE")
    return cls


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate cfg.ckpt on cfg.split; print a table and write it as JSON beside the checkpoint."""
    ckpt = Path(cfg.ckpt).expanduser()
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    if cfg.split not in EVALUATED_SPLITS:
        raise UserError(f"split must be one of {', '.join(EVALUATED_SPLITS)}, got {cfg.split!r}")
    model, _, record = load_model(ckpt, resolve_device(cfg.device))
    print(model_card(model, record))
    node = data_config(cfg, ckpt, record.tokenizer)
    # A task's batch size also sizes its validation and test sets (data.val_batches batches): they stay the run's.
    sizes = {} if issubclass(data_class(node), TaskConfig) else {"batch_size": cfg.batch_size}
    # Under its key, so that Hydra's errors name a key DataConfig does not take as data.KEY.
    data = instantiate(OmegaConf.create({"data": node}).data, block_size=model.block_size, **sizes,
                       _convert_="all")
    result = {"checkpoint": str(ckpt), **evaluate(model, record.tokenizer, data, cfg.batch_size, cfg.split)}
    if not math.isfinite(result["loss"]):
        raise UserError(f"{ckpt} gives a loss of {result['loss']} on {data.name}: its weights have diverged; evaluate a "
                        "checkpoint saved before the divergence")
    out = ckpt.with_name(f"{ckpt.stem}.eval.{data.name}{'' if cfg.split == 'val' else '.' + cfg.split}.json")
    write_atomically(out, (json.dumps(result, indent=2) + "\n").encode("utf-8"),
                     "make the checkpoint's folder writable")
    print(table(result))
    print(f"wrote {out}")
    return result
