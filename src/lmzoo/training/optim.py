"""AdamW with weight decay on matrices only, or Muon for the hidden matrices and AdamW for the rest; one
learning-rate schedule on every parameter group: linear warmup, then cosine decay or warmup-stable-decay."""

import math
from collections import ChainMap
from dataclasses import dataclass

import torch
from torch import nn

from lmzoo.errors import UserError, check_field_types
from lmzoo.models import LanguageModel


OPTIMIZERS = ("adamw", "muon")
# cosine: warmup, then a cosine to min_lr at the end. wsd: warmup, a flat stretch at lr, then a linear decay to
# min_lr over the run's last decay_fraction (torchtitan's, OLMo-core's and llm-baselines' schedule for budget sweeps).
SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW's settings; with name=muon, Muon's (muon_*) for the hidden matrices, AdamW's for the rest."""

    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"
    # The schedule's length in steps: the run's (trainer.max_steps, or what a budget buys).
    decay_steps: int = 5000
    # Phases as fractions of decay_steps, so that a run of any length keeps their shape: the warmup, and wsd's
    # final decay. warmup_steps, when set, is the warmup in steps instead.
    warmup_fraction: float = 0.05
    warmup_steps: int | None = None
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # AdamW's fused kernel (CPU and CUDA): one pass over the weights, several times faster than the foreach
    # implementation on CPU. false takes the latter, whose last bits lmzoo 0.1's loss curves carry.
    fused: bool = True

    def __post_init__(self):
        check_field_types(self, "optim")
        if self.name not in OPTIMIZERS:
            raise UserError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1 or self.muon_weight_decay < 0:
            raise UserError(f"optim.muon_lr must be positive, optim.muon_momentum within [0, 1) and "
                            f"optim.muon_weight_decay >= 0; got {self.muon_lr}, {self.muon_momentum}, "
                            f"{self.muon_weight_decay}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UserError(f"optim.lr must be positive and optim.min_lr within [0, lr]; got {self.lr}, {self.min_lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.decay_steps < 1:
            raise UserError(f"optim.decay_steps must be a positive number of steps, got {self.decay_steps}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0 (or null: optim.warmup_fraction of the run), "
                            f"got {self.warmup_steps}")
        if self.warmup_steps is not None and self.warmup_steps > self.decay_steps:
            raise UserError(f"optim.warmup_steps={self.warmup_steps} exceeds optim.decay_steps={self.decay_steps} "
                            "(trainer.max_steps unless set): the run would end still warming up; lower optim.warmup_steps, "
                            "or set it to null to warm up for optim.warmup_fraction of the run")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.decay_fraction <= 1:
            raise UserError(f"optim.warmup_fraction must lie in [0, 1) and optim.decay_fraction in (0, 1]; got "
                            f"{self.warmup_fraction}, {self.decay_fraction}")
        if self.schedule == "wsd" and self.warmup_steps is None and self.warmup_fraction + self.decay_fraction > 1:
            raise UserError(f"optim.warmup_fraction + optim.decay_fraction must be at most 1 for optim.schedule=wsd, "
                            f"got {self.warmup_fraction} + {self.decay_fraction}")
        if self.weight_decay < 0:
            raise UserError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"optim.{key} must lie in [0, 1), got {getattr(self, key)}")
        if self.eps <= 0:
            raise UserError(f"optim.eps must be positive, got {self.eps}")


@dataclass
class Schedule:
    """The learning-rate multiplier of each step: linear warmup to 1 over `warmup` steps; then a cosine to `floor`
    (min_lr / lr) at step `decay`, or for `shape` wsd 1 until `cooldown` steps before `decay` and a straight line
    to `floor` there; `floor` after `decay`.

    LambdaLR saves these attributes in every checkpoint and sets them back on resume, so a resumed run keeps the
    schedule it was trained with (lmzoo 0.1's WarmupCosine saved warmup, decay and floor: a cosine)."""

    warmup: int
    decay: int
    floor: float
    shape: str = "cosine"
    cooldown: int = 0
    # The phases' fractions of the run (None: an absolute warmup), to stretch the schedule to a new length.
    warmup_fraction: float | None = None
    decay_fraction: float = 0.0

    @classmethod
    def of(cls, config: OptimConfig) -> "Schedule":
        fraction = None if config.warmup_steps is not None else config.warmup_fraction
        schedule = cls(warmup=config.warmup_steps or 0, decay=config.decay_steps, floor=config.min_lr / config.lr,
                       shape=config.schedule, warmup_fraction=fraction,
                       decay_fraction=config.decay_fraction if config.schedule == "wsd" else 0.0)
        schedule.stretch(config.decay_steps)
        return schedule

    def stretch(self, steps: int) -> None:
        """Fit this schedule, in place, to a run of `steps` steps: its phases the same fractions of it (an absolute
        warmup kept). In place, because LambdaLR holds it for every parameter group."""
        if self.warmup_fraction is not None:
            self.warmup = round(self.warmup_fraction * steps)
        self.decay = max(steps, self.warmup + 1)
        if self.shape == "wsd":
            self.cooldown = min(self.decay - self.warmup, max(1, round(self.decay_fraction * steps)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step >= self.decay:
            return self.floor
        if self.shape == "wsd":
            left = self.decay - step
            return 1.0 if left > self.cooldown else self.floor + (1.0 - self.floor) * left / self.cooldown
        progress = (step - self.warmup) / (self.decay - self.warmup)
        return self.floor + 0.5 * (1.0 - self.floor) * (1.0 + math.cos(math.pi * progress))


def configure_optimizer(model: LanguageModel, config: OptimConfig, device: torch.device,
                        clips_scaled_gradients: bool = False):
    """The optimizer `config.name` names plus a per-step scheduler (optim.schedule), in Lightning's return format."""
    if config.name == "muon":
        return configure_muon(model, config, device, clips_scaled_gradients)
    return configure_adamw(model, config, device, clips_scaled_gradients)


def configure_adamw(model: LanguageModel, config: OptimConfig, device: torch.device,
                    clips_scaled_gradients: bool = False, params: list[nn.Parameter] | None = None):
    """AdamW (fused on CPU and CUDA unless `config.fused` is false) over `params` (default: every trainable
    parameter), with weight decay on every parameter group but norms and biases (`other`), plus a per-step
    scheduler (optim.schedule), in Lightning's return format.

    A fused AdamW unscales fp16 gradients inside its own step, after clipping would have seen them still
    scaled, so Lightning refuses it under a gradient scaler with clipping (`clips_scaled_gradients`): that
    case takes PyTorch's default implementation instead.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    undecayed = {id(p) for p in model.parameter_groups().other}
    groups = [
        {"params": [p for p in params if id(p) not in undecayed], "weight_decay": config.weight_decay},
        {"params": [p for p in params if id(p) in undecayed], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
        fused=config.fused and device.type in ("cpu", "cuda") and not clips_scaled_gradients,
    )
    return with_schedule(optimizer, config)


def with_schedule(optimizer: torch.optim.Optimizer, config: OptimConfig) -> dict:
    # One multiplier for every group: each decays from its own learning rate to min_lr / lr of it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule.of(config))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


def configure_muon(model: LanguageModel, config: OptimConfig, device: torch.device,
                   clips_scaled_gradients: bool = False):
    """PyTorch's Muon for the hidden matrices, AdamW for embeddings, the head, norms and biases (as
    modded-nanogpt and nanochat split them), stepped as one optimizer under one schedule."""
    in_muon = {id(p) for p in model.parameter_groups().hidden}
    params = [p for p in model.parameters() if p.requires_grad]
    hidden = [p for p in params if id(p) in in_muon]
    adamw = configure_adamw(model, config, device, clips_scaled_gradients,
                            params=[p for p in params if id(p) not in in_muon])["optimizer"]
    if not hidden:
        # The bigram has no hidden matrix: AdamW trains it all.
        return with_schedule(adamw, config)
    muon = torch.optim.Muon(hidden, lr=config.muon_lr, momentum=config.muon_momentum,
                            weight_decay=config.muon_weight_decay)
    return with_schedule(Combined(muon, adamw), config)


class PartStates(ChainMap):
    """The parts' per-parameter states as one mapping. Looking up a parameter reads the part that holds it:
    ChainMap would ask each part in turn, and the first one's defaultdict would make an entry for it."""

    def __getitem__(self, key):
        for states in self.maps:
            if key in states:
                return states[key]
        raise KeyError(key)


class Combined(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped, scheduled, clipped and checkpointed as one.

    Its param_groups are theirs (the same dicts), so one LR scheduler and Lightning's gradient clipping
    reach all of them; a single optimizer keeps Lightning's automatic optimization, which clipping needs.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        super().__init__([group for o in optimizers for group in o.param_groups], {})
        self.link()

    def link(self) -> None:
        """Share the parts' groups and state, which their load_state_dict replaces."""
        self.param_groups = [group for o in self.optimizers for group in o.param_groups]
        self.state = PartStates(*(o.state for o in self.optimizers))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self.link()
