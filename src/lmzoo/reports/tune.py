"""What a tune (python -m lmzoo.tune) leaves for a reader: per model, the chosen values and how they were chosen
(lmzoo.training.choice: the lowest point of a parabola through the mean loss at the best searched value and its
neighbours, with the interval it lies in), the loss against each searched value as a figure (so one sees whether the optimum was
bracketed), what pruning saved, a warning when the best lies at the edge of its range; for the whole tune,
tuned.yaml and the exact command of the final comparison, in tune.md.

It reads the trials.json each model's study writes (lmzoo.training.tune), so it needs no Optuna.
"""

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
from lmzoo.training.choice import STUDY, TRIALS, Choice, best_trial, choose
from lmzoo.training.tuned import tuned_entry

# Beside the models' study folders, a tune's folder holds TUNED and REPORT.
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
