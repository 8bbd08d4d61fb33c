"""Loss curves of runs from their TensorBoard logs, and the recall-memory trade-off from their summaries.

Three figures. The overview: train and val loss against steps and against training tokens, one colour per
run; with several runs (a sweep), also bars of the best val loss (and val/bpb where logged) per run. The
comparison (`--x`): val loss, bpb or accuracy against training tokens, FLOPs or wall-clock time, one colour per
setting (runs pooled over seeds as in the comparison table), its seeds drawn as a mean line and a min-max
band. The trade-off (`--x state`): test accuracy of the setting validation chose against the bytes of decoding
state, a panel per task, a line per architecture (Based's figure, Arora et al. 2024). TensorBoard's reader and
matplotlib are imported inside the functions that use them.
"""

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import atomic_write
from lmzoo.reports.compare import METRICS, task_of, tasks
from lmzoo.reports.runs import RunFolder, pool, read_run
from lmzoo.training.summary import SUMMARY

Series = tuple[list[int], list[float]]
# --x: what each choice puts on the x axis; state draws each setting's best, not its curve.
X_AXES = {"tokens": "training tokens", "flops": "training FLOPs", "time": "wall-clock time",
          "state": "decoding state"}


@dataclass
class Run:
    name: str
    scalars: dict[str, Series]
    # Seconds from the run's first logged event to each of a tag's values (resume gaps included).
    seconds: dict[str, list[float]]
    # Training tokens per optimizer step, from the run's config; None when it has none.
    tokens_per_step: int | None
    # Its summary and config.
    folder: RunFolder

    def best(self, tag: str) -> float | None:
        values = self.scalars.get(tag, ([], []))[1]
        return min(values) if values else None

    def tokens(self, tag: str) -> list[int] | None:
        """The training tokens seen at each value of `tag`. Lightning logs the loss of the n-th optimizer step,
        and the validation after it, at step n - 1."""
        if self.tokens_per_step is None:
            return None
        return [(step + 1) * self.tokens_per_step for step in self.scalars[tag][0]]

    def x_values(self, tag: str, x: str) -> list[float] | None:
        """The x of each value of `tag`: training tokens, FLOPs (tokens x the summary's flops_per_token) or
        seconds; None when the run does not record what that takes."""
        if x == "time":
            return self.seconds[tag]
        per_token = 1 if x == "tokens" else self.folder.value("flops_per_token")
        tokens = self.tokens(tag)
        return None if tokens is None or per_token is None else [n * per_token for n in tokens]


def find_runs(folder: Path) -> list[Path]:
    """Run folders under `folder` (itself included): those whose tensorboard/ holds event files."""
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is not a folder; pass run or sweep folders from outputs/")
    events = sorted({path.parent.parent for path in folder.rglob("tensorboard/events.out.tfevents.*")})
    if not events:
        raise UserError(f"no TensorBoard logs under {str(folder)!r}; pass a run folder (outputs/runs/...) or a sweep")
    return events


def read_events(event_dir: Path) -> dict[str, list]:
    """Every scalar tag of a run, as TensorBoard's events (step, value, wall_time) in step order; a step logged
    twice (after a resume) keeps its last event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = {}
    for tag in accumulator.Tags()["scalars"]:
        by_step = {event.step: event for event in accumulator.Scalars(tag)}
        events[tag] = [by_step[step] for step in sorted(by_step)]
    return events


def read_scalars(event_dir: Path) -> dict[str, Series]:
    """Every scalar tag of a run, as steps and values (see read_events)."""
    return as_series(read_events(event_dir))


def as_series(events: dict[str, list]) -> dict[str, Series]:
    return {tag: ([e.step for e in tag_events], [e.value for e in tag_events]) for tag, tag_events in events.items()}


def tokens_per_step(config: dict | None) -> int | None:
    """batch_size x block_size x gradient accumulation x devices x nodes, from the run's config."""
    if config is None:
        return None
    config = OmegaConf.create(config)
    batch, block = OmegaConf.select(config, "data.batch_size"), OmegaConf.select(config, "block_size")
    if not isinstance(batch, int) or not isinstance(block, int):
        return None
    devices = OmegaConf.select(config, "trainer.devices", default=1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    accumulate = OmegaConf.select(config, "trainer.accumulate_grad_batches", default=1)
    nodes = OmegaConf.select(config, "trainer.num_nodes", default=1)
    return batch * block * accumulate * devices * nodes


def load_run(run_dir: Path, name: str) -> Run:
    events = read_events(run_dir / "tensorboard")
    start = min((e.wall_time for tag_events in events.values() for e in tag_events), default=0.0)
    folder = read_run(run_dir)
    return Run(name, as_series(events), {tag: [e.wall_time - start for e in es] for tag, es in events.items()},
               tokens_per_step(folder.config), folder)


def load_runs(folders: list[Path]) -> list[Run]:
    """The runs under `folders` whose TensorBoard logs hold scalars; none is a UserError."""
    runs = []
    for folder in folders:
        folder = folder.resolve()
        for run_dir in find_runs(folder):
            # A run is named by its folder; a sweep's jobs by their folders inside the sweep.
            runs.append(load_run(run_dir, str(run_dir.relative_to(folder.parent if run_dir == folder else folder))))
    return logged(runs)


def logged(runs: list[Run]) -> list[Run]:
    """The runs that logged scalars; the others (event files empty or damaged, which TensorBoard's reader skips
    in silence) are named in a warning, or, when no run is left, a UserError."""
    empty = [run.name for run in runs if not run.scalars]
    if len(empty) == len(runs):
        raise UserError(f"the TensorBoard event files of {', '.join(empty)} hold no scalars (the run logged none, or "
                        "they are empty or damaged); plot runs that trained for trainer.log_every_n_steps steps or more")
    if empty:
        print(f"warning: left out {', '.join(empty)}: their TensorBoard event files hold no scalars (the run logged "
              "none, or they are empty or damaged)", file=sys.stderr)
    return [run for run in runs if run.scalars]


def image_format(path: Path) -> str:
    """The format matplotlib writes `path` in, from its suffix; a folder or an unknown suffix is a UserError."""
    from matplotlib.backend_bases import FigureCanvasBase

    if path.is_dir():
        raise UserError(f"--out {path} is a folder; pass an image file, such as --out {path / 'loss.png'}")
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.removeprefix(".").lower()
    if suffix not in formats:
        raise UserError(f"--out {path}: cannot write a {'.' + suffix if suffix else 'suffix-less'} image; end the name "
                        f"with one of .{', .'.join(sorted(formats))} (--out loss.png)")
    return suffix


def save(figure, path: Path) -> None:
    """Write `figure` to `path` and close it (pyplot keeps every open figure, a sweep draws one per job)."""
    import matplotlib.pyplot as plt

    image = image_format(path)
    try:
        with atomic_write(path, "choose a writable path with --out FILE.png") as file:
            figure.savefig(file, format=image, dpi=120)
    finally:
        plt.close(figure)


def plot(runs: list[Run]):
    """The figure: loss against steps and tokens; for several runs, a row of bars of their best values. A run's
    colour and marker are series_style's (the line style says train or val), its train line marked too past the
    colour cycle, so that no two runs look alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bar_tags = [tag for tag in ("val/loss", "val/bpb") if len(runs) > 1 and any(r.best(tag) for r in runs)]
    rows = 2 if bar_tags else 1
    figure, axes = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False)
    by_steps, by_tokens = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        style = series_style(index, colours)
        for tag, linestyle in (("train/loss", "-"), ("val/loss", "--")):
            if tag not in run.scalars:
                continue
            steps, values = run.scalars[tag]
            marker = style["marker"] if tag == "val/loss" or index >= len(colours) else ""
            look = {"color": style["color"], "linestyle": linestyle, "marker": marker, "markersize": 3,
                    "markevery": 1 if tag == "val/loss" else max(1, len(steps) // 8)}
            label = run.name if tag == "train/loss" or "train/loss" not in run.scalars else None
            line = by_steps.plot(steps, values, label=label, **look)[0]
            line.set_gid(f"{run.name}:{tag}")
            if run.tokens_per_step:
                line = by_tokens.plot(run.tokens(tag), values, **look)[0]
                line.set_gid(f"{run.name}:{tag}")
    by_steps.set(xlabel="step", ylabel="loss", title="loss (solid: train, dashed: val)")
    by_tokens.set(xlabel="training tokens", ylabel="loss", title="loss against tokens seen")
    by_steps.legend(fontsize="small")
    for axis, tag in zip(axes[1] if bar_tags else [], bar_tags):
        named = [(run.name, run.best(tag)) for run in runs if run.best(tag) is not None]
        bars = axis.bar(range(len(named)), [value for _, value in named], color=colours[: len(named)])
        axis.set_xticks(range(len(named)), [name for name, _ in named], rotation=30, ha="right", fontsize="small")
        axis.set(ylabel=f"best {tag}", title=f"best {tag} per run")
        axis.bar_label(bars, fmt="%.4f", fontsize="small")
        # Runs of a sweep differ by little next to the loss itself: start the axis near the lowest bar.
        values = [value for _, value in named]
        bottom = 0.95 * min(values)
        axis.set_ylim(bottom, max(values) + 0.1 * (max(values) - bottom))
    if len(bar_tags) == 1:
        axes[1][1].set_visible(False)
    figure.tight_layout()
    return figure


LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"))


def series_style(index: int, colours: list[str]) -> dict:
    """The index-th curve's colour, line and marker: the colour cycle first solid, then dashed, then dotted, so
    that the 14 models of the reference comparison draw 14 different curves from matplotlib's 10 colours."""
    cycle, position = divmod(index, len(colours))
    linestyle, marker = LINE_STYLES[cycle % len(LINE_STYLES)]
    return {"color": colours[position], "linestyle": linestyle, "marker": marker}


def plot_settings(runs: list[Run], x: str, y: str = "loss"):
    """The comparison figure: val/`y` against `x` (a key of X_AXES), a mean line and a min-max band per setting.
    Returns the figure and the names of runs left out for lack of what `x` takes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = f"val/{y}"
    logged = [run for run in runs if run.scalars.get(tag, ([], []))[0]]
    if not logged:
        hints = {"bpb": "--y bpb needs runs of lmzoo 0.2 or later, try --y loss",
                 "accuracy": "--y accuracy needs runs on a synthetic task (data=mqar), try --y loss"}
        raise UserError(f"no run logged {tag}; {hints.get(y, 'pass folders of runs that validated')}")
    curves = {id(run.folder): (run.x_values(tag, x), run.scalars[tag][1]) for run in logged}
    left_out = [run.name for run in logged if curves[id(run.folder)][0] is None]
    if len(left_out) == len(logged):
        needs = {"tokens": "its batch and block size (provenance.json or .hydra/config.yaml)",
                 "flops": "its FLOPs per token (flops_per_token in the summary.json of lmzoo 0.3 and later)"}[x]
        raise UserError(f"--x {x}: no run records {needs}; use --x time")
    figure, axis = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, setting in enumerate(pool([run.folder for run in logged])):
        drawn = [curves[id(run)] for run in setting.runs if curves[id(run)][0] is not None]
        if not drawn:
            continue
        style = series_style(index, colours)
        # Seeds are put on the union of their x values; where a seed stopped early, the mean is of the others.
        grid = np.unique(np.concatenate([xs for xs, _ in drawn]))
        stacked = np.array([np.interp(grid, xs, ys, left=math.nan, right=math.nan) for xs, ys in drawn])
        axis.plot(grid, np.nanmean(stacked, axis=0), **style, markersize=3,
                  label=f"{setting.label} (n={len(drawn)})", gid=setting.label)
        if len(drawn) > 1:
            axis.fill_between(grid, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=style["color"],
                              alpha=0.2, gid=f"{setting.label}:band")
    xlabel = "seconds since each run's first logged step" if x == "time" else X_AXES[x]
    # Models of a zoo at equal FLOPs differ by orders of magnitude in tokens (bigram's curve would sit on the
    # axis of a linear scale): beyond two decades, the x axis is logarithmic.
    placed = [xs for xs, _ in curves.values() if xs is not None]
    if x != "time" and max(map(max, placed)) > 100 * min(map(min, placed)):
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel=tag, title=f"{tag} against {X_AXES[x]} (mean of seeds, band: min to max)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure, left_out


def find_summaries(folders: list[Path]) -> list[RunFolder]:
    """The runs under `folders` (each a run or a sweep) that wrote a summary.json."""
    runs = []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{str(folder)!r} is not a folder; pass run or sweep folders from outputs/")
        runs += [read_run(path.parent) for path in sorted(folder.rglob(SUMMARY))]
    if not runs:
        raise UserError(f"no summary.json under {', '.join(map(str, folders))}; pass folders of runs that ended")
    return runs


def plot_state(runs: list[RunFolder], y: str = "accuracy"):
    """`y` against the bytes of decoding state a sequence needs (summary.json's state_bytes): a panel per task, a
    line per architecture, a point per state size. Where several settings of an architecture have one state size
    (learning rates, say), validation chooses among them by the mean over seeds (Zoology and Based report each
    width's best learning rate), and the point is that setting's mean on the test split, as the comparison
    reports; on validation where a run has no test metric (runs of lmzoo before 0.3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chooses = f"best_val_{y}"
    chosen_by, higher = METRICS[chooses]
    drawn = [s for s in pool(runs) if s.values(chooses) and s.values("state_bytes")]
    if not drawn:
        raise UserError(f"no run records both its {chosen_by} and its decoding state (summary.json of lmzoo 0.3 "
                        f"and later{', on a synthetic task: data=mqar' if y == 'accuracy' else ''})")
    shown = f"test_{y}" if all(len(s.values(f"test_{y}")) == len(s.values(chooses)) for s in drawn) else chooses
    metric = METRICS[shown][0]
    groups = tasks(drawn)
    figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = sorted({setting.model for setting in drawn})
    choose = max if higher else min
    for axis, (task, settings) in zip(axes[0], groups.items()):
        for index, model in enumerate(models):
            by_state = {}
            for setting in (s for s in settings if s.model == model):
                by_state.setdefault(statistics.fmean(setting.values("state_bytes")), []).append(setting)
            if by_state:
                states = sorted(by_state)
                chosen = [choose(by_state[state], key=lambda setting: statistics.fmean(setting.values(chooses)))
                          for state in states]
                axis.plot(states, [statistics.fmean(s.values(shown)) for s in chosen], **series_style(index, colours),
                          label=model, gid=f"{task}:{model}")
        axis.set_xscale("log")
        axis.set(xlabel="decoding state of a sequence (bytes)",
                 title=task or str(task_of(settings[0].config).get("data.name", "")))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize="small")
    # Two lines: one panel is 6 inches wide, too narrow for the sentence on one.
    figure.suptitle(f"{metric} against decoding state\na point per state size (width): the setting {chosen_by} chose")
    figure.tight_layout()
    return figure
