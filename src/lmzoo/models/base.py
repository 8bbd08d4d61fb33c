"""The one LightningModule every architecture derives from.

It owns the loss, the training and validation steps, the optimizer and schedule, logging, and the
self-describing part of checkpoints. An architecture only builds its layers and implements
`forward(idx, cache=None) -> logits`.

`block_size` is the context the model reads: the most tokens `forward` takes with a cache, and the
window the sampler crops to. Attention models read the training window (the global `block_size`);
fixed-context models (bigram: 1 token, MLP: `context` tokens) predict every position of a longer
training window from its own few predecessors, so they train on all its targets.
"""

import inspect
import math
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelSummary

from lmzoo import __version__
from lmzoo.errors import UserError
from lmzoo.optim import OptimConfig, configure_adamw


class LanguageModel(L.LightningModule):
    """Base class. Subclasses call `super().__init__(vocab_size, block_size, optim)` and build layers."""

    def __init__(self, vocab_size: int, block_size: int, optim: dict | None = None):
        super().__init__()
        # Transformer's layer factories are code that subclasses hand it, not hyper-parameters.
        self.save_hyperparameters(ignore=["make_attention", "make_mlp"])
        self.vocab_size, self.block_size = vocab_size, block_size
        self.optim_config = OptimConfig(**(optim or {}))
        self.best_val_loss = float("inf")
        self.tokenizer_spec: dict | None = None
        # Tokens per byte of the validation text, set by training from the data's meta.json.
        self.val_tokens_per_byte: float | None = None
        # How this model derives from a pretrained one ({"method": "lora", ..., "base": SOURCE}), or None.
        # A derived model's checkpoints hold only its trainable weights; loading rebuilds the base first.
        self.finetune: dict | None = None
        # trainer.skip_nonfinite: skip an update whose loss is NaN or inf instead of stopping the run.
        self.skip_nonfinite = False
        self.nonfinite_skips = 0
        # The resolved config, lmzoo version and git commit of the run, saved in its checkpoints.
        self.provenance: dict | None = None

    def model_config(self) -> dict:
        """The arguments that rebuild this architecture: its constructor's share of the hyper-parameters."""
        accepted = inspect.signature(type(self)).parameters
        return {name: value for name, value in self.hparams.items() if name in accepted}

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits of shape (B, T, vocab_size) for token ids of shape (B, T)."""
        raise NotImplementedError

    def new_cache(self, batch_size: int):
        """A KV cache for incremental decoding, or None for models that recompute their context."""
        return None

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A training-only loss recorded by the last forward (MoE load balancing), or None."""
        return None

    def log_routing(self) -> None:
        """Log what the last training forward decided (MoE expert usage); nothing for dense models."""

    def parameter_counts(self) -> tuple[int, int]:
        """Total parameters, and those active for one token (fewer in sparse models)."""
        total = sum(p.numel() for p in self.parameters())
        return total, total

    def describe(self) -> list[str]:
        """Lines printed after Lightning's model summary."""
        total, active = self.parameter_counts()
        return [f"parameters: {total:,} total, {active:,} active per token"]

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        # train/loss stays the cross-entropy, comparable with val/loss and across models.
        self.log("train/loss", loss, prog_bar=True)
        auxiliary = self.auxiliary_loss()
        if auxiliary is not None:
            self.log("train/aux_loss", auxiliary)
            loss = loss + auxiliary
        # The rest only on the steps whose metrics Lightning writes to the logger: each self.log call
        # costs time, and routing statistics a device sync.
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("lr", self.lr_schedulers().get_last_lr()[0])
            self.log_routing()
        # None skips the optimizer step.
        return loss if self.loss_is_finite(loss) else None

    def loss_is_finite(self, loss: torch.Tensor) -> bool:
        """False when this update must be skipped; stops the run on a non-finite loss unless told to skip."""
        # All ranks decide together: DDP hangs if one rank skips a step the others take.
        if not self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            return True
        if not self.skip_nonfinite:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            kept = f"; the best checkpoint {best} is intact" if best else ""
            raise UserError(f"loss is {loss.item()} at step {self.trainer.global_step}; lower optim.lr or pass "
                            f"trainer.skip_nonfinite=true to skip such updates{kept}")
        self.nonfinite_skips += 1
        self.log("train/nonfinite_skips", float(self.nonfinite_skips))
        return False

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch[0].size(0))
        if self.val_tokens_per_byte:
            bpb = bits_per_byte(loss, self.val_tokens_per_byte)
            self.log("val/bpb", bpb, sync_dist=True, batch_size=batch[0].size(0))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics["val/loss"].item()
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.log("val/loss_best", self.best_val_loss, sync_dist=True)

    def setup(self, stage: str) -> None:
        # Lightning logs the initial hyper-parameters after this, so the counts reach TensorBoard's HPARAMS.
        total, active = self.parameter_counts()
        self.save_hyperparameters({**self.hparams, "parameters": total, "active_parameters": active})

    def on_fit_start(self):
        if self.trainer.is_global_zero and any(isinstance(c, ModelSummary) for c in self.trainer.callbacks):
            print("\n".join(self.describe()))

    def configure_optimizers(self):
        return configure_adamw(self, self.optim_config, self.device)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["lmzoo"] = {
            "version": __version__,
            "target": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self.model_config(),
            "tokenizer": self.tokenizer_spec,
            "best_val_loss": self.best_val_loss,
            "rng": capture_rng(),
            "finetune": self.finetune,
            "run": self.provenance,
        }
        if self.finetune:
            trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint):
        info = checkpoint["lmzoo"]
        self.best_val_loss = info["best_val_loss"]
        self.tokenizer_spec = info["tokenizer"]
        restore_rng(info["rng"])


def bits_per_byte(nats_per_token, tokens_per_byte: float):
    """Loss in bits per byte of the original text: one scale for char, BPE and any other tokenizer."""
    return nats_per_token / math.log(2) * tokens_per_byte


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
