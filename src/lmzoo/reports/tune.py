"""What a tune (python -m lmzoo.tune) leaves for a reader: per model, the best values, the loss against each
searched value as a figure (so one sees whether the optimum was bracketed), a warning when the best lies at the
edge of its range or when the trials validated too seldom to be pruned; for the whole tune, tuned.yaml and the
exact command of the final comparison, in tune.md.

It reads the trials.json each model's study writes (lmzoo.training.tune), so it needs no Optuna.
"""

import json
import math
import shlex
from pathlib import Path

from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import write_atomically
from lmzoo.reports.compare import job_dirs
from lmzoo.reports.plot import save
from lmzoo.reports.report import sweep_overrides

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


def monitor(study: dict) -> str:
    """What ranked the study's trials: val/loss (lowest best), or val/accuracy (highest); tunes of lmzoo 0.2, val/loss."""
    return study.get("monitor", "val/loss")


def best_trial(study: dict) -> dict | None:
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    best = max if monitor(study) == "val/accuracy" else min
    return best(complete, key=lambda t: t["value"]) if complete else None


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


def pruning_warnings(study: dict) -> list[str]:
    """One line when pruning was asked for but could not act: every finished trial validated only at its last
    step, so the pruner had no curve to compare trials on before their end."""
    ended = [t for t in study["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    if not study.get("prune_after") or not ended or any(t.get("validations", 0) > 1 for t in ended):
        return []
    steps = max((t.get("last_step") or 0 for t in ended), default=0)
    if not steps:
        return []
    return [f"warning: model={study['model']}: no trial could be pruned before its end, as each validated only at "
            f"its last step ({steps}); validate more often for the pruner to act: "
            f"trainer.val_check_interval={max(1, steps // 4)}"]


def plot_trials(study: dict, path: Path) -> None:
    """Best val/loss (or the study's monitor) against each searched value, a panel per key: finished trials as
    dots, pruned ones hollow at their last value, the best as a star."""
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
        if space["log"]:
            axis.set_xscale("log")
        if space["choices"] is None:
            axis.axvspan(space["low"], space["high"], color="0.93", zorder=0)
        axis.set(xlabel=key, ylabel=f"best {monitor(study)}", title=f"{study['model']}: {monitor(study)} against {key}")
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
    """SWEEP_DIR/tuned.yaml (each model's best values), each model's figure, and tune.md; return tune.md's text."""
    sweep_dir = Path(sweep_dir)
    studies = [(job, read_trials(job)) for job in job_dirs(sweep_dir) if (job / TRIALS).is_file()]
    tuned, sections, warnings = {}, [], []
    for job, study in studies:
        best, model = best_trial(study), study["model"]
        states = [t["state"] for t in study["trials"]]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
        if best is None:
            sections.append(f"### {model}\n\nNo trial finished ({counts}).")
            continue
        tuned[model] = best["params"]
        figure = job / "loss_vs_settings.png"
        plot_trials(study, figure)
        lines = edge_warnings(study) + pruning_warnings(study)
        warnings += lines
        values = ", ".join(f"`{key}={value:.3g}`" if isinstance(value, float) else f"`{key}={value}`"
                           for key, value in best["params"].items())
        note = "".join(f"\n\n{line}" for line in lines)
        sections.append(f"### {model}\n\nBest: {values}, {monitor(study)} {best['value']:.4f} (trial {best['number']}; "
                        f"{counts}).{note}\n\n![{model}]({figure.relative_to(sweep_dir)})")
    write_atomically(sweep_dir / TUNED, OmegaConf.to_yaml(OmegaConf.create(tuned)).encode("utf-8"))
    command = final_command(sweep_dir, list(tuned), trial_seed, seeds, final) if tuned else "(no model has a finished trial)"
    text = (f"# Tune {sweep_dir.name}\n\nEach model's settings, tuned at this folder's budget; the trials' seed was "
            f"{trial_seed}. The final comparison takes each model's tuned values ({TUNED}) and fresh seeds:\n\n"
            f"```bash\n{command}\n```\n\n## Models\n\n" + "\n\n".join(sections) + "\n")
    write_atomically(sweep_dir / REPORT, text.encode("utf-8"))
    return "\n".join([*warnings, f"final comparison: {command}"])
