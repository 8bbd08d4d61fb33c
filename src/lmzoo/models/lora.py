"""LoRA: freeze a pretrained model and learn a low-rank update B @ A beside each targeted linear layer.

W x becomes W x + (alpha / r) B A x, with A (r, in) random and B (out, r) zero, so training starts
from exactly the pretrained model. Merging folds (alpha / r) B A into W and leaves plain layers.
"""

import fnmatch
import math

import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.models.base import LanguageModel
from lmzoo.models.blocks import make_dropout


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = make_dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * (self.lora_B @ self.lora_A).to(self.base.weight.dtype)
        return self.base


class LoRA:
    """The `finetune=lora` recipe: which layers to adapt, with what rank and scale.

    Targets are names each architecture declares in its `lora_targets` (qkv, proj and mlp for the transformers,
    whose layers' parts declare theirs); an expert layer's target covers every expert.
    """

    def __init__(self, r: int = 8, alpha: float = 16.0, targets: list[str] = ("qkv", "proj", "mlp"),
                 dropout: float = 0.0):
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise UserError(f"finetune.r must be a positive integer, got {r!r}")
        # The update is scaled by alpha / r: at 0 the adapters get no gradient, and the run trains nothing.
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
            raise UserError(f"finetune.alpha must be a positive number (the adapters' update is scaled by alpha / r), "
                            f"got {alpha!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise UserError(f"finetune.dropout must lie in [0, 1), got {dropout!r}")
        if not isinstance(targets, (list, tuple)) or not all(isinstance(target, str) for target in targets):
            raise UserError(f"finetune.targets must be a list of target names, such as [qkv,mlp], got {targets!r}")
        if not targets:
            raise UserError("finetune.targets is empty; name at least one target, for example finetune.targets=[qkv]")
        self.r, self.alpha, self.targets, self.dropout = r, alpha, list(targets), dropout

    @property
    def spec(self) -> dict:
        return {"method": "lora", "r": self.r, "alpha": self.alpha, "targets": self.targets, "dropout": self.dropout}

    def apply(self, model: LanguageModel) -> LanguageModel:
        """Freeze every parameter of `model` and wrap the targeted linears with trainable adapters, in place."""
        declared = model.lora_targets
        # A declared target may match nothing in a model's options.
        present = sorted(target for target, patterns in declared.items() if matching_linears(model, patterns))
        valid = f"choose finetune.targets from {present}" if present else "LoRA cannot adapt it"
        for target in self.targets:
            if target not in present:
                raise UserError(f"LoRA target {target!r} matches no layer of {type(model).__name__}; {valid}")
        model.requires_grad_(False)
        chosen = matching_linears(model, [pattern for target in self.targets for pattern in declared[target]])
        for name in chosen:
            parent, child = split_name(model, name)
            setattr(parent, child, LoRALinear(getattr(parent, child), self.r, self.alpha, self.dropout))
        return model


def matching_linears(model: nn.Module, patterns) -> list[str]:
    """Names of the nn.Linear modules of `model` that match any of the glob patterns."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place, leaving plain nn.Linear layers."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, child = split_name(model, name)
            setattr(parent, child, module.merged())
    return model


def split_name(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return model.get_submodule(parent), child
