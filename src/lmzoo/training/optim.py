"""AdamW with weight decay on matrices only, and a linear-warmup cosine learning-rate schedule."""

import math
from dataclasses import dataclass

import torch

from lmzoo.errors import UserError, check_field_types


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    # AdamW's fused kernel (CPU and CUDA): one pass over the weights, several times faster than the foreach
    # implementation on CPU. false takes the latter, whose last bits lmzoo 0.1's loss curves carry.
    fused: bool = True

    def __post_init__(self):
        check_field_types(self, "optim")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UserError(f"optim.lr must be positive and optim.min_lr within [0, lr]; got {self.lr}, {self.min_lr}")
        if self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps > self.decay_steps:
            raise UserError(f"optim.warmup_steps={self.warmup_steps} exceeds optim.decay_steps={self.decay_steps} "
                            "(trainer.max_steps unless set): the run would end still warming up; lower optim.warmup_steps")
        if self.weight_decay < 0:
            raise UserError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"optim.{key} must lie in [0, 1), got {getattr(self, key)}")
        if self.eps <= 0:
            raise UserError(f"optim.eps must be positive, got {self.eps}")


class WarmupCosine:
    """LR multiplier: linear warmup to 1, cosine decay to min_lr/lr at decay_steps, then flat."""

    def __init__(self, config: OptimConfig):
        self.warmup, self.decay = config.warmup_steps, max(config.decay_steps, config.warmup_steps + 1)
        self.floor = config.min_lr / config.lr

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step >= self.decay:
            return self.floor
        progress = (step - self.warmup) / (self.decay - self.warmup)
        return self.floor + 0.5 * (1.0 - self.floor) * (1.0 + math.cos(math.pi * progress))


def configure_adamw(model: torch.nn.Module, config: OptimConfig, device: torch.device,
                    clips_scaled_gradients: bool = False):
    """AdamW (fused on CPU and CUDA unless `config.fused` is false) plus a per-step warmup-cosine scheduler, in
    Lightning's return format.

    A fused AdamW unscales fp16 gradients inside its own step, after clipping would have seen them still
    scaled, so Lightning refuses it under a gradient scaler with clipping (`clips_scaled_gradients`): that
    case takes PyTorch's default implementation instead.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
        fused=config.fused and device.type in ("cpu", "cuda") and not clips_scaled_gradients,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
