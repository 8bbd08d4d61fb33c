"""How a tune chooses a model's values from its trials: the lowest point of a parabola through the mean loss at the
best searched value and its neighbours, with the interval it lies in. It reads the records of a study's trials
(TRIALS, which lmzoo.training.tune writes beside the Optuna study, STUDY), so it needs no Optuna: the tune asks it
which values to repeat, and the report (lmzoo.reports.tune) what was chosen."""

import dataclasses
import math
import statistics

import numpy as np

# A tune's folder holds, per model, a folder with the Optuna study (STUDY) and its trials as the report reads them
# (TRIALS).
STUDY = "study.db"
TRIALS = "trials.json"


def best_trial(study: dict) -> dict | None:
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    return min(complete, key=lambda t: t["value"]) if complete else None


@dataclasses.dataclass(frozen=True)
class Point:
    """A searched value (u: on the key's scale, its log on a log range) and the val/loss of each of its finished
    trials (one per seed: the trials' own, and tune.repeats others)."""

    u: float
    losses: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses)


@dataclasses.dataclass(frozen=True)
class Fit:
    """The parabola through the mean loss at the best searched value and at its neighbours, its lowest point (the
    chosen value) and the interval in which that point lies."""

    key: str
    log: bool
    points: tuple[Point, Point, Point]
    chosen: float
    interval: tuple[float, float]
    # The standard deviation of a trial's loss between seeds, measured by repeats; None without them.
    noise: float | None

    @property
    def neighbours(self) -> tuple[float, float]:
        """The searched values beside the best, between which the chosen value lies (3 significant digits)."""
        unscale = math.exp if self.log else float
        return tuple(float(f"{unscale(point.u):.3g}") for point in (self.points[0], self.points[2]))

    def loss(self, value: float) -> float:
        u = math.log(value) if self.log else value
        return float(np.polyval(np.polyfit([p.u for p in self.points], [p.mean for p in self.points], 2), u))


@dataclasses.dataclass(frozen=True)
class Choice:
    """A model's tuned values by key, the fit that chose them (None: the best trial's), and how, in words."""

    values: dict
    fit: Fit | None
    how: str


def lowest(u: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The lowest point, between u[0] and u[2], of the parabola through three losses at u (each row of `losses` a
    set of three; Brent's parabolic step); where they do not curve upwards, the u of the lowest loss."""
    left, right = losses[..., 1] - losses[..., 0], losses[..., 1] - losses[..., 2]
    numerator = (u[1] - u[0]) ** 2 * right - (u[1] - u[2]) ** 2 * left
    denominator = (u[1] - u[0]) * right - (u[1] - u[2]) * left
    curvature = (-right / (u[2] - u[1]) - left / (u[1] - u[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(curvature > 0, u[1] - 0.5 * numerator / denominator, u[np.argmin(losses, axis=-1)])
    return np.clip(step, u[0], u[2])


# Draws of the three mean losses, as noisy as the repeats measured, from which the chosen value's interval comes
# (its 2.5th and 97.5th percentiles); from a fixed seed, so that the same trials give the same interval.
DRAWS = 4000


def choose(study: dict) -> Choice | None:
    """The values to tune to. For one searched range of numbers, the lowest point of the parabola through the mean
    loss at the best value and at its neighbours (on the key's scale), so that more than one noisy trial decides,
    with the 95% interval of that point under the noise that repeats over seeds measured (tune.repeats), or
    without repeats the neighbours' bracket. Else, or where the best has no finished neighbour on a side, the best
    trial's values. None without a finished trial."""
    best = best_trial(study)
    if best is None:
        return None
    own = Choice(dict(best["params"]), None, f"the best trial's (trial {best['number']})")
    (key, space), *others = study["search"].items()
    if others or space["choices"] is not None or space["integer"]:
        return dataclasses.replace(own, how=own.how + ": a fit takes one searched range of numbers")
    scale, unscale = (math.log, math.exp) if space["log"] else (float, float)
    losses = {}
    for trial in study["trials"]:
        if trial["state"] == "COMPLETE" and trial["value"] is not None and math.isfinite(trial["value"]):
            losses.setdefault(scale(trial["params"][key]), []).append(trial["value"])
    points = [Point(u, tuple(values)) for u, values in sorted(losses.items())]
    at = min(range(len(points)), key=lambda index: points[index].mean)
    if at == 0 or at == len(points) - 1:
        return dataclasses.replace(own, how=own.how + ": no finished trial on one side of it to fit a curve through")
    three = tuple(points[at - 1: at + 2])
    u, means = np.array([p.u for p in three]), np.array([p.mean for p in three])
    chosen = float(lowest(u, means))
    repeated = [p for p in points if len(p.losses) > 1]
    noise = (math.sqrt(sum(sum((y - p.mean) ** 2 for y in p.losses) for p in repeated) /
                       sum(len(p.losses) - 1 for p in repeated)) if repeated else None)
    if noise is None:
        interval = (u[0], u[2])
        spread = ("the best's neighbours, between which it lies (tune.repeats measures the noise, which narrows it "
                  "where the trials allow)")
    else:
        counts = np.array([len(p.losses) for p in three])
        draws = means + np.random.default_rng(0).normal(0, 1, (DRAWS, 3)) * noise / np.sqrt(counts)
        interval = tuple(np.percentile(lowest(u, draws), [2.5, 97.5]))
        spread = (f"95% of the chosen values of {DRAWS:,} draws of the three mean losses with the noise the repeats "
                  f"measured (a trial's loss varies by {noise:.2g} between seeds)")
    fit = Fit(key, space["log"], three, float(f"{unscale(chosen):.3g}"),
              (float(f"{unscale(interval[0]):.3g}"), float(f"{unscale(interval[1]):.3g}")), noise)
    on = f"log {key}" if space["log"] else key
    trials = sum(len(p.losses) for p in three)
    how = (f"the lowest point of the parabola in {on} through the mean val/loss at the best value, "
           f"{key}={unscale(three[1].u):.3g}, and at its neighbours ({trials} trials); the interval holds {spread}")
    return Choice({key: fit.chosen}, fit, how)
