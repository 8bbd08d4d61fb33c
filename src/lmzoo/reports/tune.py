"""What a tune (python -m lmzoo.tune) leaves for a reader: per model, the chosen values and how they were chosen
(a parabola fitted to the loss against the searched value near the best trial, with the values it cannot tell
from the chosen one), the loss against each searched value as a figure (so one sees whether the optimum was
bracketed), what pruning saved, a warning when the best lies at the edge of its range; for the whole tune,
tuned.yaml and the exact command of the final comparison, in tune.md.

It reads the trials.json each model's study writes (lmzoo.training.tune), so it needs no Optuna.
"""

import dataclasses
import json
import math
import shlex
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
# The finished trials on each side of the best (nearest first, on the searched key's scale) that the parabola is
# fitted to: five points at most, three parameters.
FIT_NEIGHBOURS = 2


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
class Fit:
    """A parabola a + b·u + c·u² of the loss against the searched key on its scale (u: its log on a log range)
    through the finished trials around the best, its lowest point and the interval of values it cannot tell from it."""

    key: str
    log: bool
    coefficients: tuple[float, float, float]
    points: list[tuple[float, float]]
    chosen: float
    interval: tuple[float, float]
    # The residual standard deviation of the fit (None with 3 points, which it passes through).
    noise: float | None

    def loss(self, value: float) -> float:
        c, b, a = self.coefficients
        u = math.log(value) if self.log else value
        return a + b * u + c * u * u


@dataclasses.dataclass(frozen=True)
class Choice:
    """A model's tuned values by key, the fit that chose them (None: the best trial's), and how, in words."""

    values: dict
    fit: Fit | None
    how: str


def choose(study: dict) -> Choice | None:
    """The values to tune to: for one searched range of numbers, the lowest point of a parabola fitted to the loss
    against it (on its scale) near the best trial, so that more than one noisy trial decides; else, or where the
    loss does not curve upwards around a best bracketed by finished trials, the best trial's. None without a
    finished trial."""
    best = best_trial(study)
    if best is None:
        return None
    own = Choice(dict(best["params"]), None, f"the best trial's (trial {best['number']})")
    (key, space), *others = study["search"].items()
    if others or space["choices"] is not None or space["integer"]:
        return dataclasses.replace(own, how=own.how + ": a fit takes one searched range of numbers")
    scale, unscale = (math.log, math.exp) if space["log"] else (float, float)
    points = sorted((scale(t["params"][key]), t["value"]) for t in study["trials"]
                    if t["state"] == "COMPLETE" and t["value"] is not None and math.isfinite(t["value"]))
    at = scale(best["params"][key])
    below, above = [p for p in points if p[0] < at], [p for p in points if p[0] > at]
    if not below or not above:
        return dataclasses.replace(own, how=own.how + ": no finished trial on one side of it to fit a curve through")
    near = below[-FIT_NEIGHBOURS:] + [p for p in points if p[0] == at] + above[:FIT_NEIGHBOURS]
    u, loss = np.array([p[0] for p in near]), np.array([p[1] for p in near])
    c, b, a = np.polyfit(u, loss, 2)
    if c <= 0:
        return dataclasses.replace(own, how=own.how + ": the loss around it does not curve upwards")
    # The lowest point, kept between the best trial's neighbours, where the fit is trusted.
    lowest = min(max(-b / (2 * c), below[-1][0]), above[0][0])
    residuals = loss - np.polyval((c, b, a), u)
    noise = float(np.sqrt(np.sum(residuals ** 2) / (len(near) - 3))) if len(near) > 3 else None
    if noise is None:
        interval = (below[-1][0], above[0][0])
    else:
        half = math.sqrt(noise / c)
        interval = (max(lowest - half, near[0][0]), min(lowest + half, near[-1][0]))
    chosen = float(f"{unscale(lowest):.3g}")
    fit = Fit(key, space["log"], (float(c), float(b), float(a)), near, chosen,
              (float(f"{unscale(interval[0]):.3g}"), float(f"{unscale(interval[1]):.3g}")), noise)
    on = f"log {key}" if space["log"] else key
    spread = (f"the values whose fitted loss lies within the fit's residual standard deviation ({noise:.2g}) of its "
              "lowest" if noise is not None else "the best trial's neighbours (3 points leave no residual to "
              "measure the noise by)")
    how = (f"the lowest point of a parabola in {on} fitted to the val/loss of the {len(near)} finished trials around "
           f"the best (trial {best['number']}, {key}={best['params'][key]:.3g}); the interval holds {spread}")
    return Choice({key: chosen}, fit, how)


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
            ends = [p[0] for p in fit.points]
            grid = np.linspace(ends[0], ends[-1], 100)
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


def final_seeds(trial_seed: int, count: int) -> list[int]:
    """`count` seeds from 1 up, none the trials' own, so that no row benefits from selection on its own noise."""
    seeds = []
    candidate = 1
    while len(seeds) < count:
        if candidate != trial_seed:
            seeds.append(candidate)
        candidate += 1
    return seeds


def final_command(sweep_dir: Path, models: list[str], trial_seed: int, seeds: int, final: list[str]) -> str:
    """The final comparison: the tune's own overrides (its budget, data, ...) and each model at its tuned values,
    with fresh seeds; or with `final` (as [experiment=reference]) in place of the tune's models, seeds and
    experiment."""
    recorded = sweep_overrides(sweep_dir)
    kept = [o for o in (recorded[2] if recorded else [])
            if not o.lstrip("+~").startswith(("model=", "tune.", "seed=", "hydra.", "sample_tokens=", "experiment="))]
    chosen = final or [f"model={','.join(models)}", f"seed={','.join(map(str, final_seeds(trial_seed, seeds)))}"]
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
    command = final_command(sweep_dir, list(tuned), trial_seed, seeds, final) if tuned else "(no model has a finished trial)"
    text = (f"# Tune {sweep_dir.name}\n\nEach model's settings, tuned at this folder's budget; the trials' seed was "
            f"{trial_seed}. The final comparison takes each model's chosen values ({TUNED}: a value, and where a fit "
            f"chose it, its interval) and fresh seeds:\n\n```bash\n{command}\n```\n\n## Models\n\n"
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
