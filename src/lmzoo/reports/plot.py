"""Loss curves of runs from their TensorBoard logs.

Train and val loss against steps and against training tokens, one colour per run; with several runs
(a sweep), also bars of the best val loss (and val/bpb where logged) per run. TensorBoard's reader and
matplotlib are imported inside the functions that use them.
"""

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from lmzoo.errors import UserError
from lmzoo.files import atomic_write

Series = tuple[list[int], list[float]]


@dataclass
class Run:
    name: str
    scalars: dict[str, Series]
    # Training tokens per optimizer step, from the run's config; None when it has none.
    tokens_per_step: int | None

    def best(self, tag: str) -> float | None:
        values = self.scalars.get(tag, ([], []))[1]
        return min(values) if values else None


def find_runs(folder: Path) -> list[Path]:
    """Run folders under `folder` (itself included): those whose tensorboard/ holds event files."""
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is not a folder; pass run or sweep folders from outputs/")
    events = sorted({path.parent.parent for path in folder.rglob("tensorboard/events.out.tfevents.*")})
    if not events:
        raise UserError(f"no TensorBoard logs under {str(folder)!r}; pass a run folder (outputs/runs/...) or a sweep")
    return events


def read_scalars(event_dir: Path) -> dict[str, Series]:
    """Every scalar tag of a run, as steps and values; a step logged twice (after a resume) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}
        steps = sorted(by_step)
        scalars[tag] = (steps, [by_step[step] for step in steps])
    return scalars


def tokens_per_step(run_dir: Path) -> int | None:
    """batch_size x block_size x gradient accumulation x devices, from the run's .hydra/config.yaml."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        return None
    config = OmegaConf.load(config_path)
    batch, block = OmegaConf.select(config, "data.batch_size"), OmegaConf.select(config, "block_size")
    if not isinstance(batch, int) or not isinstance(block, int):
        return None
    devices = OmegaConf.select(config, "trainer.devices", default=1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    accumulate = OmegaConf.select(config, "trainer.accumulate_grad_batches", default=1)
    nodes = OmegaConf.select(config, "trainer.num_nodes", default=1)
    return batch * block * accumulate * devices * nodes


def load_runs(folders: list[Path]) -> list[Run]:
    runs = []
    for folder in folders:
        folder = folder.resolve()
        for run_dir in find_runs(folder):
            # A run is named by its folder; a sweep's jobs by their folders inside the sweep.
            name = str(run_dir.relative_to(folder.parent if run_dir == folder else folder))
            runs.append(Run(name, read_scalars(run_dir / "tensorboard"), tokens_per_step(run_dir)))
    return runs


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
    image = image_format(path)
    with atomic_write(path, "choose a writable path with --out FILE.png") as file:
        figure.savefig(file, format=image, dpi=120)


def plot(runs: list[Run]):
    """The figure: loss against steps and tokens; for several runs, a row of bars of their best values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bar_tags = [tag for tag in ("val/loss", "val/bpb") if len(runs) > 1 and any(r.best(tag) for r in runs)]
    rows = 2 if bar_tags else 1
    figure, axes = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False)
    by_steps, by_tokens = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        colour = colours[index % len(colours)]
        for tag, style in (("train/loss", "-"), ("val/loss", "--o")):
            if tag not in run.scalars:
                continue
            steps, values = run.scalars[tag]
            label = run.name if tag == "train/loss" or "train/loss" not in run.scalars else None
            line = by_steps.plot(steps, values, style, color=colour, markersize=3, label=label)[0]
            line.set_gid(f"{run.name}:{tag}")
            if run.tokens_per_step:
                tokens = [step * run.tokens_per_step for step in steps]
                by_tokens.plot(tokens, values, style, color=colour, markersize=3)[0].set_gid(f"{run.name}:{tag}")
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
