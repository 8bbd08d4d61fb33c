"""LitLM: the one LightningModule, wrapping any model of the zoo.

It owns what training adds to a model: the loss, the training and validation steps, the optimizer and
schedule, logging, non-finite handling, RNG capture and the checkpoint schema. The model stays a plain
`LanguageModel` (lmzoo.models.base holds the contract between the two).
"""

import math
import random
import time
from dataclasses import replace

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lmzoo.checkpoints.ckpt import upgrade_checkpoint
from lmzoo.checkpoints.record import CHECKPOINT_KEYS, ModelRecord, architecture_record
from lmzoo.data.tasks import IGNORE, correct_answers
from lmzoo.errors import UserError
from lmzoo.inference.evaluation import bits_per_byte
from lmzoo.models import LanguageModel, ModelOutput
from lmzoo.training.compat import logs_this_step
from lmzoo.training.optim import OptimConfig, configure_optimizer


class LitLM(L.LightningModule):
    def __init__(self, model: LanguageModel, optim: OptimConfig, tokenizer: dict, val_tokens_per_byte: float | None = None,
                 skip_nonfinite: bool = False, finetune: dict | None = None, provenance: dict | None = None,
                 flops_per_token: int = 0, scores_answers: bool = False):
        """`tokenizer` is the data's tokenizer spec, saved with every checkpoint. `finetune` describes how the
        model derives from a pretrained one ({"method": "lora", ..., "base": SOURCE}); such a model's
        checkpoints hold only its trainable weights. `provenance` is the run's config, version and commit.
        `flops_per_token`: the model's training FLOPs per token at the run's context (LanguageModel.flops_per_token).
        `scores_answers`: the data's targets are answers at some positions (a synthetic task, lmzoo.data.tasks),
        whose exact-match share validation logs as val/accuracy."""
        super().__init__()
        self.model = model
        self.optim = optim
        self.tokenizer = tokenizer
        self.val_tokens_per_byte = val_tokens_per_byte
        self.skip_nonfinite = skip_nonfinite
        self.finetune = finetune
        self.provenance = provenance
        self.flops_per_token = flops_per_token
        self.scores_answers = scores_answers
        self.state_bytes = decoding_state_bytes(model)
        self.best_val_loss = float("inf")
        self.best_val_accuracy = None
        self.nonfinite_skips = 0
        # The step of the first validation whose loss was NaN or inf: the run stops there, and says so.
        self.diverged_at = None
        # The step of the last checkpoint written, so that the run can end with last.ckpt at its last step.
        self.saved_step = None
        # Wall time of the run's earlier segments (from the checkpoint resumed), and when this one's fit began and ended.
        self.earlier_wall_time = 0.0
        self.fit_started = self.fit_ended = None
        # A fine-tuned model's checkpoints hold only the adapters, loaded over the base built before.
        self.strict_loading = finetune is None

    def forward(self, idx: torch.Tensor) -> ModelOutput:
        return self.model(idx)

    def cross_entropy(self, batch) -> tuple[torch.Tensor, ModelOutput]:
        """The mean loss over the batch's targets, and the model's output: of every position for text, of the
        answers alone for a synthetic task (its logits there only: LanguageModel.forward's only_at)."""
        x, y = batch
        if self.scores_answers:
            scored = y != IGNORE
            output = self.model(x, only_at=scored)
            return F.cross_entropy(output.logits.float(), y[scored]), output
        output = self.model(x)
        logits = output.logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1)), output

    def training_step(self, batch, batch_idx):
        loss, output = self.cross_entropy(batch)
        # Metrics only on the steps whose metrics Lightning writes to the logger (the progress bar is redrawn
        # as seldom): each self.log call runs Lightning's bookkeeping, and expert loads a device sync.
        if logs_this_step(self.trainer):
            # train/loss stays the cross-entropy, comparable with val/loss and across models.
            self.log("train/loss", loss, prog_bar=True)
            if output.aux_loss is not None:
                self.log("train/aux_loss", output.aux_loss)
            self.log("lr", self.lr_schedulers().get_last_lr()[0])
            for name, load in output.expert_load.items():
                for expert, share in enumerate(load.tolist()):
                    self.log(f"experts/{name}/{expert}", share)
        if output.aux_loss is not None:
            loss = loss + output.aux_loss
        # None skips the optimizer step.
        return loss if self.loss_is_finite(loss) else None

    def loss_is_finite(self, loss: torch.Tensor) -> bool:
        """False when this update must be skipped; stops the run on a non-finite loss unless told to skip."""
        # All ranks decide together: DDP hangs if one rank skips a step the others take.
        if not self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            return True
        if not self.skip_nonfinite:
            checkpoint = self.trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint else ""
            # After a resume from another folder, the best checkpoint Lightning remembers is that run's.
            kept = f"; the best checkpoint {best} is intact" if best and checkpoint.dirpath in best else ""
            fix = ("trainer.precision=16-true has no loss scaling and overflows: use 16-mixed (CUDA) or bf16-mixed"
                   if str(self.trainer.precision) == "16-true" else
                   "lower optim.lr or pass trainer.skip_nonfinite=true to skip such updates")
            raise UserError(f"loss is {loss.item()} at step {self.trainer.global_step}; {fix}{kept}")
        self.nonfinite_skips += 1
        self.log("train/nonfinite_skips", float(self.nonfinite_skips))
        return False

    def validation_step(self, batch, batch_idx):
        loss, output = self.cross_entropy(batch)
        targets = batch[1]
        # Weighted by the positions scored, the epoch's means are over every target of the validation set (and
        # every answer of a task, whose examples may hold different numbers of them).
        count = int((targets != IGNORE).sum())
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=count)
        if self.val_tokens_per_byte:
            bpb = bits_per_byte(loss, self.val_tokens_per_byte)
            self.log("val/bpb", bpb, sync_dist=True, batch_size=count)
        if self.scores_answers:
            correct = correct_answers(output.logits, targets)
            self.log("val/accuracy", correct.float().mean(), prog_bar=True, sync_dist=True, batch_size=count)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        val_loss = self.trainer.callback_metrics["val/loss"].item()
        if not math.isfinite(val_loss):
            # Weights can grow finite but huge (trainer.skip_nonfinite skips the updates, not the growth).
            self.diverged_at = self.diverged_at if self.diverged_at is not None else self.trainer.global_step
            self.trainer.should_stop = True
            return
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.log("val/loss_best", self.best_val_loss, sync_dist=True)
        if self.scores_answers:
            accuracy = self.trainer.callback_metrics["val/accuracy"].item()
            self.best_val_accuracy = max(self.best_val_accuracy or 0.0, accuracy)
            self.log("val/accuracy_best", self.best_val_accuracy, sync_dist=True)

    def setup(self, stage: str) -> None:
        # Lightning logs these after setup, so they reach TensorBoard's HPARAMS.
        total, active = self.model.parameter_counts()
        self.save_hyperparameters({"model": architecture_record(self.model), "optim": vars(self.optim),
                                   "parameters": total, "active_parameters": active,
                                   "flops_per_token": self.flops_per_token, "state_bytes": self.state_bytes})

    @property
    def wall_time_s(self) -> float:
        """Wall time of the whole run so far: earlier segments and this fit."""
        if self.fit_started is None:
            return self.earlier_wall_time
        return self.earlier_wall_time + (self.fit_ended or time.perf_counter()) - self.fit_started

    def on_fit_end(self):
        self.fit_ended = time.perf_counter()

    def on_fit_start(self):
        self.fit_started, self.fit_ended = time.perf_counter(), None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip here unless a gradient scaler (fp16) is involved, so that bf16-mixed keeps the fused AdamW:
        Lightning 2.6's mixed-precision plugin refuses to clip for any optimizer that unscales in its own step,
        even in bf16, where nothing is scaled. Under a scaler Lightning clips between unscaling and the step,
        which configure_optimizers allows for by leaving AdamW unfused (lmzoo.training.optim.configure_adamw).
        tests/test_compat.py checks that Lightning still refuses."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self):
        # fp16 mixed precision scales the loss; Lightning unscales the gradients before it clips them.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        return configure_optimizer(self.model, self.optim, self.device,
                                   clips_scaled_gradients=scaled and bool(self.trainer.gradient_clip_val))

    def on_save_checkpoint(self, checkpoint):
        self.saved_step = self.trainer.global_step
        record = ModelRecord.of(self.model, self.tokenizer, optim=vars(self.optim), best_val_loss=self.best_val_loss,
                                best_val_accuracy=self.best_val_accuracy, diverged_at=self.diverged_at, wall_time_s=self.wall_time_s, rng=capture_rng(),
                                finetune=self.finetune, run=self.provenance)
        checkpoint["lmzoo"] = record.stored(CHECKPOINT_KEYS)
        if self.finetune:
            trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint):
        # Lightning loads the state dict after this hook, so a checkpoint of lmzoo 0.1 is upgraded first.
        upgrade_checkpoint(checkpoint)
        record = ModelRecord.read(checkpoint["lmzoo"])
        self.best_val_loss = record.best_val_loss
        self.best_val_accuracy = record.best_val_accuracy
        self.diverged_at = record.diverged_at
        self.earlier_wall_time = record.wall_time_s
        # Lightning restores the checkpoint's optimizer and schedule, so its settings are the run's from now on.
        # lmzoo 0.1 recorded no optimizer settings; its schedule was a warmup-cosine, as a record without a schedule.
        self.optim = OptimConfig(**record.optim) if record.optim else replace(self.optim, schedule="cosine")
        restore_rng(record.rng)


def decoding_state_bytes(model: LanguageModel) -> int | None:
    """Bytes of the decoding state one sequence of the model's context needs, in the weights' dtype: the keys and
    values of its attention layers (a local layer's window, MLA's latent), its recurrent layers' state
    (`state_bytes` of the models that keep a cache); None for the models that recompute their context."""
    return model.state_bytes() if hasattr(model, "state_bytes") else None


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
