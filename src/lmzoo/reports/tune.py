"""What a tune (python -m lmzoo.tune) leaves for a reader: per model, the chosen values and how they were chosen
(the lowest point of a parabola through the mean loss at the best searched value and its neighbours, with the
interval it lies in), the loss against each searched value as a figure (so one sees whether the optimum was
bracketed), what pruning saved, a warning when the best lies at the edge of its range; for the whole tune,
tuned.yaml and the exact command of the final comparison, in tune.md.

It reads the trials.json each model's study writes (lmzoo.training.tune), so it needs no Optuna.
"""

import dataclasses
import json
import math
import shlex
import statistics
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.reports.compare import job_dirs
from lmzoo.reports.plot import save
from lmzoo.reports.report import sweep_overrides

# A tune's folder holds, per model, a folder with the Optuna study (STUDY) and its trials as the report reads them
# (TRIALS); beside those, TUNED and REPORT.
STUDY = "study.db"
TRIALS = "trials.json"
TUNED = "tuned.yaml"
REPORT = "tune.md"
# A best value within this share of its range's (log) width from an end lies at the edge.
EDGE = 0.1


def read_trials(folder: Path) -> dict:
    path = folder / TRIALS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not the trials.json a tune writes ({error}); tune that model again") from None


def best_trial(study: dict) -> dict | None:
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    return min(complete, key=lambda t: t["value"]) if complete else None


def position(space: dict, value: float) -> float:
    """Where `value` lies in its range: 0 at low, 1 at high (in logs for a log range)."""
    scale = math.log if space["log"] else float
    return (scale(value) - scale(space["low"])) / (scale(space["high"]) - scale(space["low"]))


def edge_warnings(study: dict) -> list[str]:
    """One line per searched range whose best value lies at its edge, naming the range to search instead."""
    best, lines = best_trial(study), []
    for key, space in study["search"].items():
        if best is None or space["choices"] is not None:
            continue
        where = position(space, best["params"][key])
        if EDGE < where < 1 - EDGE:
            continue
        low, high = space["low"], space["high"]
        if space["log"]:
            wider = [low / 10, high] if where <= EDGE else [low, high * 10]
        else:
            wider = [low - (high - low), high] if where <= EDGE else [low, high + (high - low)]
        wider = [int(v) for v in wider] if space["integer"] else wider
        lines.append(f"warning: model={study['model']}: the best {key}={best['params'][key]:.3g} lies at the "
                     f"{'lower' if where <= EDGE else 'upper'} edge of the range searched [{low:g}, {high:g}]; widen it: "
                     f"tune.search.{key}=[{wider[0]:g},{wider[1]:g}]")
    return lines


def pruning_note(study: dict) -> str | None:
    """What pruning saved: the trials it stopped, where, and the share of all the trials' steps left untrained."""
    pruned = [t for t in study["trials"] if t["state"] == "PRUNED" and t.get("pruned_at") and t.get("steps")]
    ended = [t for t in study["trials"] if t["state"] in ("COMPLETE", "PRUNED") and t.get("steps")]
    if not study.get("prune_after") or not ended:
        return None
    total = sum(t["steps"] for t in ended)
    saved = sum(t["steps"] - t["pruned_at"] for t in pruned)
    where = (f", at step{'s' if len(pruned) > 1 else ''} {', '.join(str(t['pruned_at']) for t in pruned)} of "
             f"{'/'.join(str(steps) for steps in sorted({t['steps'] for t in pruned}))}" if pruned else "")
    return (f"Pruning stopped {len(pruned)} of {len(ended)} trials{where}: {saved:,} of {total:,} trial steps not "
            f"trained ({saved / total:.0%}).")


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


def tuned_entry(choice: Choice) -> dict:
    """A model's entry in tuned.yaml: each key's value, with its interval where a fit chose it."""
    return {key: {"value": value, "interval": list(choice.fit.interval)} if choice.fit and key == choice.fit.key
            else value for key, value in choice.values.items()}


def tuned_value(entry):
    """The value a run takes from an entry of tuned.yaml: {value: V, interval: [LOW, HIGH]}, or V as older
    releases (and values chosen without a fit) write it."""
    return entry["value"] if isinstance(entry, dict) and "value" in entry else entry


def plot_trials(study: dict, choice: Choice, path: Path) -> None:
    """Best val/loss against each searched value, a panel per key: finished trials as dots, pruned ones hollow
    at their last check's loss, the best as a star; the fitted parabola, its chosen value and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(study["search"])
    figure, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    best = best_trial(study)
    for axis, key in zip(axes[0], keys):
        space = study["search"][key]
        for state, loss_key, style in (("COMPLETE", "value", {"color": "C0"}),
                                       ("PRUNED", "last_loss", {"facecolors": "none", "edgecolors": "C1"})):
            points = [(t["params"][key], t[loss_key]) for t in study["trials"]
                      if t["state"] == state and t[loss_key] is not None and key in t["params"]]
            if points:
                axis.scatter(*zip(*points), label=state.lower(), **style)
        if best is not None:
            axis.scatter([best["params"][key]], [best["value"]], marker="*", s=220, color="C3", label="best", zorder=3)
        fit = choice.fit if choice.fit and choice.fit.key == key else None
        if fit is not None:
            grid = np.linspace(fit.points[0].u, fit.points[-1].u, 100)
            values = np.exp(grid) if fit.log else grid
            axis.plot(values, [fit.loss(v) for v in values], color="C2", label="fit")
            axis.axvspan(*fit.interval, color="C2", alpha=0.2, zorder=1, label="interval")
            axis.axvline(fit.chosen, color="C2", linestyle="--", label=f"chosen {fit.chosen:.3g}")
        if space["log"]:
            axis.set_xscale("log")
        if space["choices"] is None:
            axis.axvspan(space["low"], space["high"], color="0.93", zorder=0)
        axis.set(xlabel=key, ylabel="best val/loss", title=f"{study['model']}: val/loss against {key}")
        axis.legend()
    figure.tight_layout()
    save(figure, path)


def final_seeds(trial_seeds: set[int], count: int) -> list[int]:
    """`count` seeds from 1 up, none the trials' own, so that no row benefits from selection on its own noise."""
    seeds = []
    candidate = 1
    while len(seeds) < count:
        if candidate not in trial_seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def final_command(sweep_dir: Path, models: list[str], trial_seeds: set[int], seeds: int, final: list[str]) -> str:
    """The final comparison: the tune's own overrides (its budget, data, ...) and each model at its tuned values,
    with fresh seeds; or with `final` (as [experiment=reference]) in place of the tune's models, seeds and
    experiment."""
    recorded = sweep_overrides(sweep_dir)
    kept = [o for o in (recorded[2] if recorded else [])
            if not o.lstrip("+~").startswith(("model=", "tune.", "seed=", "hydra.", "sample_tokens=", "experiment="))]
    chosen = final or [f"model={','.join(models)}", f"seed={','.join(map(str, final_seeds(trial_seeds, seeds)))}"]
    return shlex.join(["python", "-m", "lmzoo.train", "-m", *chosen, f"tuned={sweep_dir / TUNED}", *kept])


def write_tune_report(sweep_dir: str | Path, trial_seed: int, seeds: int, final: list[str]) -> str:
    """SWEEP_DIR/tuned.yaml (each model's chosen values), each model's figure, and tune.md; return the warnings and
    the final command, to print."""
    sweep_dir = Path(sweep_dir)
    studies = [(job, read_trials(job)) for job in job_dirs(sweep_dir) if (job / TRIALS).is_file()]
    tuned, sections, warnings = {}, [], []
    for job, study in studies:
        best, choice, model = best_trial(study), choose(study), study["model"]
        states = [t["state"] for t in study["trials"]]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
        if best is None:
            sections.append(f"### {model}\n\nNo trial finished ({counts}).")
            continue
        tuned[model] = tuned_entry(choice)
        figure = job / "loss_vs_settings.png"
        plot_trials(study, choice, figure)
        lines = edge_warnings(study)
        warnings += lines
        chosen = ", ".join(f"`{key}={shown(value)}`" + (f" (interval {shown(choice.fit.interval[0])} to "
                                                        f"{shown(choice.fit.interval[1])})"
                                                        if choice.fit and key == choice.fit.key else "")
                           for key, value in choice.values.items())
        best_values = ", ".join(f"`{key}={shown(value)}`" for key, value in best["params"].items())
        pruning = pruning_note(study)
        note = "".join(f"\n\n{line}" for line in lines)
        sections.append(f"### {model}\n\nChosen: {chosen}, {choice.how}.\n\nBest trial: {best_values}, val/loss "
                        f"{best['value']:.4f} (trial {best['number']}; {counts}).{' ' + pruning if pruning else ''}"
                        f"{note}\n\n![{model}]({figure.relative_to(sweep_dir)})")
    write_atomically(sweep_dir / TUNED, OmegaConf.to_yaml(OmegaConf.create(tuned)).encode("utf-8"))
    repeats = sorted({t.get("seed") for _, study in studies for t in study["trials"]} - {None, trial_seed})
    command = (final_command(sweep_dir, list(tuned), {trial_seed, *repeats}, seeds, final) if tuned
               else "(no model has a finished trial)")
    repeated = f" (their repeats': {', '.join(map(str, repeats))})" if repeats else ""
    text = (f"# Tune {sweep_dir.name}\n\nEach model's settings, tuned at this folder's budget; the trials' seed was "
            f"{trial_seed}{repeated}. The final comparison takes each model's chosen values ({TUNED}: a value, and "
            f"where a fit chose it, its interval) and fresh seeds:\n\n```bash\n{command}\n```\n\n## Models\n\n"
            + "\n\n".join(sections) + "\n")
    write_atomically(sweep_dir / REPORT, text.encode("utf-8"))
    return "\n".join([*warnings, f"final comparison: {command}"])


def shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def check_not_a_tune(folder: Path) -> None:
    """Refuse a tune's folder where a sweep's is expected: it holds studies, not runs with summaries."""
    if any(folder.glob(f"*/{STUDY}")):
        raise UserError(f"{folder} is a tune's folder (python -m lmzoo.tune), not a sweep's: its report is "
                        f"{folder / REPORT} and its values {folder / TUNED}; compare the sweep of the final "
                        "comparison it names")
