"""Build data, model, callbacks, logger and Trainer from a composed config, train, and sample."""

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.ckpt import read_checkpoint
from lmzoo.checkpoints.load import load_model
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.errors import UserError
from lmzoo.inference.evaluation import bits_per_byte
from lmzoo.inference.sampling import SamplingSettings, sample_text
from lmzoo.reports.compare import write_summary
from lmzoo.training.callbacks import TokensPerSecond
from lmzoo.training.checkpoint_io import AtomicCheckpointIO
from lmzoo.training.datamodule import TokenDataModule
from lmzoo.training.finetune import from_pretrained
from lmzoo.training.module import LitLM
from lmzoo.training.provenance import provenance, write_provenance


class DropAdverts(logging.Filter):
    """Lightning's tips about its cloud services, printed on every run, say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(name).addFilter(DropAdverts())


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: ckpt_path, or with resume=auto the run folder's last.ckpt."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint {str(path)!r} does not exist; pass ckpt_path=PATH to a .ckpt file")
        return str(path)
    if cfg.resume == "auto":
        last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
        return str(last) if last.is_file() else None
    if cfg.resume is not None:
        raise UserError(f"resume={cfg.resume!r} is not understood; use resume=auto or ckpt_path=PATH")
    return None


def check_resumable(ckpt_path: str, tokenizer_spec: dict) -> None:
    """A readable lmzoo checkpoint of this release, trained on tokens of the same tokenizer as the data."""
    trained_on = read_checkpoint(ckpt_path)["lmzoo"]["tokenizer"]
    if trained_on != tokenizer_spec:
        raise UserError(f"{ckpt_path} was trained with the {describe_tokenizer(trained_on)}, but the data uses the "
                        f"{describe_tokenizer(tokenizer_spec)}; resume with the data=/tokenizer= of that run")


def build(cfg: DictConfig) -> tuple[TokenDataModule, LitLM, L.Trainer]:
    """The datamodule (prepared), the model wrapped for training (compiled with compile=true), and the Trainer
    a config describes."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = TokenDataModule(instantiate(cfg.data, _convert_="all"))
    datamodule.prepare_data()
    tokenizer = datamodule.meta["tokenizer"]
    finetune = None
    if cfg.init_from:
        model, finetune = from_pretrained(cfg, tokenizer)
    elif cfg.finetune:
        raise UserError("a finetune recipe needs pretrained weights; pass init_from=PATH or init_from=hf:NAME")
    else:
        model = instantiate(cfg.model, vocab_size=datamodule.vocab_size, _convert_="all").build()
    lit = LitLM(model, instantiate(cfg.optim), tokenizer, datamodule.val_tokens_per_byte,
                skip_nonfinite=cfg.trainer.get("skip_nonfinite", False), finetune=finetune, provenance=provenance(cfg))
    if cfg.compile:
        # Compiles the model's forward in place, so checkpoints keep their plain parameter names.
        model.compile()
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        write_provenance(lit.provenance, cfg.paths.output_dir)
    return datamodule, lit, trainer


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Lightning's Trainer with lmzoo's callbacks, logger and atomic checkpoint writes."""
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    if not cfg.trainer.enable_progress_bar:
        # trainer.enable_progress_bar=false turns the bar off; Lightning refuses a bar callback alongside it.
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    # skip_nonfinite is lmzoo's own trainer option: the model acts on it, Lightning's Trainer never sees it.
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    options.pop("skip_nonfinite", None)
    return instantiate(options, callbacks=callbacks, logger=instantiate(cfg.logger), plugins=[AtomicCheckpointIO()])


def train(cfg: DictConfig) -> dict:
    """Train as configured; return the best checkpoint path and validation loss."""
    ckpt_path = resume_path(cfg)
    datamodule, lit, trainer = build(cfg)
    if ckpt_path:
        check_resumable(ckpt_path, datamodule.meta["tokenizer"])
    started = time.perf_counter()
    # Our checkpoints hold RNG states (numpy, Python), which torch's weights-only loading refuses.
    trainer.fit(lit, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    wall_time = time.perf_counter() - started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    result = {"best_checkpoint": best, "best_val_loss": lit.best_val_loss, "steps": trainer.global_step}
    if trainer.is_global_zero:
        write_summary(cfg.paths.output_dir, run_summary(lit, trainer, wall_time))
    if best and cfg.sample_tokens > 0 and trainer.is_global_zero:
        model, tokenizer, _ = load_model(best)
        settings = SamplingSettings(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50)
        text = sample_text(model, tokenizer, "", settings, torch.Generator().manual_seed(cfg.seed))
        print(f"\nSample from {best}:\n{text}\n")
    return result


def run_summary(lit: LitLM, trainer: L.Trainer, wall_time: float) -> dict:
    """The run's row in a sweep's comparison table (see lmzoo.reports.compare)."""
    total, active = lit.model.parameter_counts()
    rates = [c.mean_rate for c in trainer.callbacks if isinstance(c, TokensPerSecond)]
    best = None if math.isinf(lit.best_val_loss) else lit.best_val_loss
    # Bits per byte put models with different tokenizers on one scale.
    best_bpb = bits_per_byte(best, lit.val_tokens_per_byte) if best is not None and lit.val_tokens_per_byte else None
    return {
        "model": HydraConfig.get().runtime.choices.model if HydraConfig.initialized() else type(lit.model).__name__,
        "parameters": total,
        "active_parameters": active,
        "best_val_loss": best,
        "best_val_bpb": best_bpb,
        "steps": trainer.global_step,
        "tokens_per_sec": rates[0] if rates else None,
        "wall_time_s": wall_time,
        "status": "interrupted" if trainer.interrupted else "done",
    }
