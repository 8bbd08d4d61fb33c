"""Budgets: train each model for the same FLOPs, tokens or minutes, whatever its size.

A FLOP or token budget becomes a number of steps before the Trainer is built (run_length, a pure function of
the run's settings): trainer.max_steps and the schedule's optim.decay_steps both follow from it, so the learning
rate reaches its floor at the budget, and a resumed run derives the same steps. A minutes budget is Lightning's
max_time; its schedule follows an estimate of the steps that fit (lmzoo.training.callbacks.ScheduleToDeadline),
so it is not exact.
"""

import dataclasses
import math

from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from lmzoo.errors import UserError, check_field_types
from lmzoo.training.compat import device_count


@dataclasses.dataclass(kw_only=True)
class Budget:
    """conf/train.yaml's `budget:` block: at most one of flops, tokens and minutes, and a ceiling on the steps."""

    flops: float | None = None
    tokens: float | None = None
    minutes: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        check_field_types(self, "budget")
        given = self.given()
        if len(given) > 1:
            raise UserError(f"give one budget, not {' and '.join(f'budget.{k}={v}' for k, v in given.items())}")
        for key, value in {**given, "max_steps": self.max_steps}.items():
            if value is not None and not 0 < value < math.inf:
                raise UserError(f"budget.{key} must be positive and finite (or null), got {value}")
        if self.max_steps is not None and not {"flops", "tokens"} & set(given):
            raise UserError("budget.max_steps caps the steps of budget.flops or budget.tokens; give one of them, or "
                            "set trainer.max_steps")

    def given(self) -> dict:
        """The budget to spend: flops, tokens or minutes, with its value."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None and key != "max_steps"}

    def to_train_further(self, step: int) -> str:
        """What continues a run that ended at `step` further: a higher trainer.max_steps, or under a FLOP or token
        budget, whose steps replace it, a larger budget (or a higher budget.max_steps where that capped it)."""
        given = {key: value for key, value in self.given().items() if key != "minutes"}
        if not given:
            return f"trainer.max_steps above {step}"
        if self.max_steps is not None and self.max_steps <= step:
            return f"budget.max_steps above {step}"
        (key, value), = given.items()
        return f"budget.{key} above {value:g}"


def check_steps_not_typed(budget: Budget, max_steps: int, typed: frozenset[str]) -> None:
    """A FLOP or token budget sets the run's steps: a trainer.max_steps typed beside it would be dropped without a
    word (a minutes budget keeps it as a ceiling)."""
    given = {key: value for key, value in budget.given().items() if key != "minutes"}
    if given and "trainer.max_steps" in typed:
        (key, value), = given.items()
        raise UserError(f"trainer.max_steps={max_steps} is set beside budget.{key}={value:g}, whose steps replace it; "
                        f"cap the budget's steps with budget.max_steps={max_steps}, or leave budget.{key} out")


def world_size(trainer: DictConfig) -> int:
    """The processes a run trains on, as Lightning counts them from trainer.accelerator, trainer.devices and
    trainer.num_nodes."""
    options = OmegaConf.to_container(trainer, resolve=True)
    try:
        return device_count(options.get("accelerator", "auto"), options.get("devices", "auto"), options.get("num_nodes", 1))
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise UserError(f"Lightning refuses the trainer settings: {str(error).splitlines()[0]}; see conf/trainer/") from None


@dataclasses.dataclass(frozen=True)
class RunLength:
    """How long a run trains: its steps (-1: until max_time), the schedule's length, how often it validates, and
    the line that says what its budget gave (None without a budget)."""

    max_steps: int
    decay_steps: int
    val_check_interval: int
    max_time: str | None = None
    said: str | None = None


def run_length(budget: Budget, *, max_steps: int, decay_steps: int, val_check_interval: int, warmup_steps: int | None,
               step_tokens: int, accumulate_grad_batches: int, flops_per_token: int,
               max_steps_typed: bool = False) -> RunLength:
    """The run's length from its budget: max_steps and decay_steps for FLOPs and tokens, max_time for minutes;
    without a budget, the steps as given. `step_tokens`: the tokens of one optimizer step over all processes.
    `warmup_steps` is the absolute warmup, if any (a fractional one fits any length). A `max_steps` the user typed
    stays a ceiling under a minutes budget; conf/trainer's default does not cut it short."""
    # A run shorter than the validation interval validates at its end (ValidateAtEnd), as a budget's run does.
    asked = RunLength(max_steps, decay_steps, min(val_check_interval, max_steps * accumulate_grad_batches))
    if not budget.given():
        return asked
    (key, value), = budget.given().items()
    if key == "minutes":
        # Lightning's "DD:HH:MM:SS", to the second.
        seconds = max(1, round(value * 60))
        max_time = f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        cap = f", or at trainer.max_steps={max_steps} if sooner" if max_steps_typed else ""
        # A first guess, replaced once steps are timed.
        return dataclasses.replace(asked, max_steps=max_steps if max_steps_typed else -1,
                                   val_check_interval=val_check_interval, decay_steps=(warmup_steps or 0) + 1,
                                   max_time=max_time,
                                   said=f"budget.minutes={value}: training stops after {value} minutes{cap}; the "
                                        "learning rate follows an estimate of the steps that fit, so the budget is not "
                                        "exact (FLOP and token budgets are)")
    step_cost = step_tokens * (flops_per_token if key == "flops" else 1)
    steps = math.floor(value / step_cost)
    unit = "FLOPs" if key == "flops" else "tokens"
    if steps < 1:
        raise UserError(f"budget.{key}={value:g} is less than one step ({step_cost:,} {unit}); raise it")
    if warmup_steps is not None and steps <= warmup_steps:
        raise UserError(f"budget.{key}={value:g} gives {steps} steps, no more than optim.warmup_steps={warmup_steps}; "
                        "raise the budget, lower optim.warmup_steps, or set it to null (optim.warmup_fraction of the run)")
    said = f"budget.{key}={value:g}: {steps:,} steps of {step_tokens:,} tokens, {flops_per_token:,} FLOPs per token"
    if budget.max_steps is not None and steps > budget.max_steps:
        if warmup_steps is not None and budget.max_steps <= warmup_steps:
            raise UserError(f"budget.max_steps={budget.max_steps} is no more than optim.warmup_steps={warmup_steps}; "
                            "raise it or lower optim.warmup_steps")
        said += f"; cut to budget.max_steps={budget.max_steps:,}, which spend {budget.max_steps / steps:.2g} of the budget"
        steps = budget.max_steps
    # Validation (counted in batches) at least at the budget's end: see ValidateAtEnd.
    return RunLength(steps, steps, min(val_check_interval, steps * accumulate_grad_batches), said=said)
