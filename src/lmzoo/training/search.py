"""What a tune searches (conf/tune/): its settings, each key's range or choices, and the first trials spread over
them. Imports no Optuna (Space.suggest takes Optuna's trial), so the configs register TuneSettings' defaults."""

import dataclasses
import math
import random

from lmzoo.errors import UserError, check_field_types
from lmzoo.training.provenance import flatten

# What a tune may rank its trials by (tune.monitor): train's result key, and the study's direction.
MONITORS = {"val/loss": ("best_val_loss", "minimize"), "val/accuracy": ("best_val_accuracy", "maximize")}


@dataclasses.dataclass(kw_only=True)
class TuneSettings:
    """conf/tune.yaml's `tune:` block (conf/tune/default.yaml sets what differs from these defaults)."""

    # The tune's folder (hydra.sweep.dir): the same command with the same folder continues a killed tune.
    folder: str
    # Trials per model, those of earlier commands in this folder that finished included: raising it adds trials.
    trials: int = 12
    # The seed of Optuna's sampler (TPE); every trial trains with the run's `seed`.
    seed: int = 0
    # What to search, by config key: [low, high] (floats above 0 on a log scale, integers as integers, else
    # linear), or {choices: [A, B, ...]}.
    search: dict = dataclasses.field(default_factory=lambda: {"optim": {"lr": [1e-4, 3e-2]}})
    # Once this many trials have finished, a trial whose loss at a check is worse than the median of the finished
    # trials at the same check is stopped there (Optuna's MedianPruner); None: no pruning.
    prune_after: int | None = 4
    # Checks of each trial before its end, evenly spaced (3: at each quarter of its steps), each on check_batches of
    # the validation batches (spread over them); 0: no pruning. The trial's result is its own best val/loss.
    checks: int = 3
    check_batches: int = 5
    # Trials that repeat, with this many other seeds (the next ones after the run's `seed`), the best value and its
    # neighbours, which the tuned value is fitted through: they measure the seed-to-seed noise that gives the tuned
    # value its interval. 0: no repeats; the interval is then the best value's neighbours.
    repeats: int = 0
    # Seeds of the final comparison's command: this many, none of them the trials' seeds.
    final_seeds: int = 3
    # Overrides that make the final comparison instead of the tune's model=, seed= and experiment= (an experiment
    # names its own), as [experiment=reference].
    final: list = dataclasses.field(default_factory=list)
    # What ranks the trials, each by its best: val/loss (lowest), or on a synthetic task (data=mqar) val/accuracy
    # (highest).
    monitor: str = "val/loss"

    def __post_init__(self):
        check_field_types(self, "tune")
        if self.monitor not in MONITORS:
            raise UserError(f"tune.monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.trials < 1 or self.final_seeds < 1:
            raise UserError(f"tune.trials and tune.final_seeds must be positive, got {self.trials}, {self.final_seeds}")
        if self.prune_after is not None and self.prune_after < 1:
            raise UserError(f"tune.prune_after must be positive or null (no pruning), got {self.prune_after}")
        if self.checks < 0 or self.check_batches < 1:
            raise UserError(f"tune.checks must be >= 0 (0: no pruning) and tune.check_batches positive, got "
                            f"{self.checks}, {self.check_batches}")
        if self.repeats < 0:
            raise UserError(f"tune.repeats must be >= 0 (0: no repeats), got {self.repeats}")
        if self.repeats and self.monitor == "val/accuracy":
            raise UserError("tune.repeats measure the noise of the curve fitted through val/loss; tune.monitor="
                            "val/accuracy takes the best trial's values, so set tune.repeats=0")
        if not self.search:
            raise UserError("tune.search names nothing to tune; give a range, as tune.search.optim.lr=[1e-4,3e-2]")
        self.search = {key: Space.of(key, value) for key, value in flatten(self.search, leaf=is_choices).items()}

    @property
    def prunes(self) -> bool:
        return self.prune_after is not None and self.checks > 0

    def trial_seeds(self, seed: int) -> list[int]:
        """The seeds the trials train with: the run's `seed`, and each repeat's (the next ones)."""
        return [(seed + repeat) % 2**32 for repeat in range(self.repeats + 1)]


@dataclasses.dataclass(frozen=True)
class Space:
    """What one key may take: a range [low, high] (on a log scale for floats above 0) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    @classmethod
    def of(cls, key: str, value) -> "Space":
        if isinstance(value, dict) and is_choices(value) and isinstance(value["choices"], list):
            if value["choices"]:
                return cls(key, choices=tuple(value["choices"]))
        numbers = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not numbers or not value[0] < value[1]:
            raise UserError(f"tune.search.{key} must be a range [low, high] with low < high, or {{choices: [A, B, ...]}}; "
                            f"got {value!r}")
        integer = all(isinstance(v, int) for v in value)
        return cls(key, float(value[0]), float(value[1]), log=not integer and value[0] > 0, integer=integer)

    def suggest(self, trial: "optuna.Trial"):
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def at(self, fraction: float):
        """The value `fraction` of the way through the range (on its scale), or through the choices."""
        if self.choices is not None:
            return self.choices[int(fraction * len(self.choices))]
        if self.log:
            return math.exp(math.log(self.low) + fraction * (math.log(self.high) - math.log(self.low)))
        value = self.low + fraction * (self.high - self.low)
        return round(value) if self.integer else value

    def ends(self) -> list:
        """The values at the range's ends, or every choice."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def spread(search: dict, count: int, seed: int) -> list[dict]:
    """`count` settings that cut each key's range into `count` equal parts and take the middle of each, the keys
    paired at random (a Latin hypercube). Optuna's samplers start at random, and a few random draws may all miss
    a decade; these bracket an optimum from the first trials."""
    rng = random.Random(seed)
    columns = {}
    for key, space in search.items():
        columns[key] = [space.at((part + 0.5) / count) for part in range(count)]
        rng.shuffle(columns[key])
    return [{key: column[trial] for key, column in columns.items()} for trial in range(count)]


def is_choices(value: dict) -> bool:
    """A search's {choices: [...]}: one key's values, not a group of keys."""
    return set(value) == {"choices"}
