"""Which model size is best for a compute budget: the IsoFLOP analysis of Chinchilla (Hoffmann et al. 2022,
approach 2) over a sweep of sizes and budgets.

For each model and budget C (the runs' `budget.flops`), the best loss against parameters N is fitted by a
parabola in ln N, whose minimum is the compute-optimal size N*(C); across budgets, ln N* = a ln C + b is the
power law N*(C) = e^b C^a. Seeds of one size and budget are fitted as points of their own.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmzoo.errors import UserError
from lmzoo.reports.compare import Column, flops, loss, read_sweep, table


@dataclass(frozen=True)
class Point:
    parameters: int
    loss: float


@dataclass
class IsoFLOP:
    budget: float
    points: list[Point]
    # loss = c[0] (ln N)² + c[1] ln N + c[2]
    coefficients: np.ndarray

    @property
    def optimum(self) -> float:
        return math.exp(-self.coefficients[1] / (2 * self.coefficients[0]))

    def fitted(self, parameters: float) -> float:
        return float(np.polyval(self.coefficients, math.log(parameters)))

    @property
    def inside(self) -> bool:
        """Whether N* lies within the sizes trained (else the parabola extrapolates)."""
        return min(p.parameters for p in self.points) <= self.optimum <= max(p.parameters for p in self.points)


@dataclass
class ScalingFit:
    model: str
    isoflops: list[IsoFLOP]
    # ln N* = law[0] ln C + law[1]; None with one budget.
    law: np.ndarray | None

    def law_optimum(self, budget: float) -> float:
        return math.exp(float(np.polyval(self.law, math.log(budget))))


def read_points(sweep_dir: str | Path, y: str = "loss") -> dict[str, dict[float, list[Point]]]:
    """The finished runs of a sweep as points (parameters, best val/`y`), by model and budget."""
    points = {}
    for run in read_sweep(sweep_dir):
        value = run.value(f"best_val_{y}")
        if value is None or math.isinf(value):
            continue  # failed, or still running: the comparison table shows why
        budget = ((run.config or {}).get("budget") or {}).get("flops")
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise UserError(f"run {run.folder} has no budget.flops; scaling reads a sweep over sizes and budgets, "
                            "such as -m model.target_params=2e5,5e5,1e6 budget.flops=1e14,3e14,1e15")
        if run.value("parameters") is None:
            raise UserError(f"run {run.folder} has no parameters in its summary.json; train it again")
        points.setdefault(run.value("model") or "?", {}).setdefault(float(budget), []).append(
            Point(run.value("parameters"), value))
    if not points:
        raise UserError(f"no finished run in {sweep_dir} has a best val/{y}; wait for the sweep, or see its "
                        "comparison.md")
    return points


def fit(model: str, budgets: dict[float, list[Point]]) -> ScalingFit:
    isoflops = []
    for budget, points in sorted(budgets.items()):
        sizes = sorted({p.parameters for p in points})
        if len(sizes) < 3:
            raise UserError(f"{model}: budget {budget:.3g} FLOPs has {len(sizes)} size(s) "
                            f"({', '.join(map(str, sizes))}); the IsoFLOP parabola needs at least 3: sweep "
                            "model.target_params over 3 or more values")
        coefficients = np.polyfit([math.log(p.parameters) for p in points], [p.loss for p in points], 2)
        if coefficients[0] <= 0:
            raise UserError(f"{model}: at budget {budget:.3g} FLOPs the loss does not curve upwards in log N over "
                            f"sizes {sizes[0]:,}..{sizes[-1]:,}, so it has no best size; add sizes on both sides of "
                            "the best")
        isoflops.append(IsoFLOP(budget, points, coefficients))
    law = None
    if len(isoflops) > 1:
        law = np.polyfit([math.log(i.budget) for i in isoflops], [math.log(i.optimum) for i in isoflops], 1)
    return ScalingFit(model, isoflops, law)


def fit_sweep(sweep_dir: str | Path, y: str = "loss") -> list[ScalingFit]:
    return [fit(model, budgets) for model, budgets in read_points(sweep_dir, y).items()]


def describe(result: ScalingFit, y: str = "loss") -> str:
    """The fit of one model as text: the law, each budget's N*, and every run's residual."""
    if result.law is None:
        head = f"{result.model}: one budget, so no power law across budgets; its compute-optimal size:"
    else:
        head = (f"{result.model}: N*(C) = {math.exp(result.law[1]):.3g} · C^{result.law[0]:.3f} "
                f"over {len(result.isoflops)} budgets (best val/{y})")
    budgets = [{"budget": i.budget, "sizes": len({p.parameters for p in i.points}),
                "optimum": f"{i.optimum:.3g}" + ("" if i.inside else " (outside the sizes trained)"),
                "best": i.fitted(i.optimum),
                "law": None if result.law is None else f"{result.law_optimum(i.budget):.3g}",
                "residual": None if result.law is None else math.log(i.optimum / result.law_optimum(i.budget))}
               for i in result.isoflops]
    budget_columns = [Column("budget (FLOPs)", "budget", flops), Column("sizes", "sizes"), Column("N*", "optimum"),
                      Column(f"val/{y} at N*", "best", loss), Column("N* of the law", "law"),
                      Column("residual (ln N*)", "residual", lambda v: f"{v:+.3f}")]
    runs = [{"budget": i.budget, "parameters": p.parameters, "loss": p.loss, "fitted": i.fitted(p.parameters),
             "residual": p.loss - i.fitted(p.parameters)}
            for i in result.isoflops for p in sorted(i.points, key=lambda p: p.parameters)]
    run_columns = [Column("budget (FLOPs)", "budget", flops), Column("parameters", "parameters", lambda v: f"{v:,}"),
                   Column(f"best val/{y}", "loss", loss), Column("IsoFLOP fit", "fitted", loss),
                   Column("residual", "residual", lambda v: f"{v:+.4f}")]
    return (f"{head}\n\n{table(budgets, budget_columns)}\n\nEach run against its budget's parabola in ln N:\n\n"
            f"{table(runs, run_columns)}")


def plot_scaling(results: list[ScalingFit], y: str = "loss"):
    """Per model: the IsoFLOP curves (loss against parameters, one colour per budget, N* starred) and N*
    against the budget with the power law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(13, 4.8 * len(results)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (isoflop_axis, law_axis), result in zip(axes, results):
        for index, isoflop in enumerate(result.isoflops):
            colour = colours[index % len(colours)]
            sizes = [p.parameters for p in isoflop.points]
            grid = np.geomspace(min(sizes + [isoflop.optimum]) / 1.3, max(sizes + [isoflop.optimum]) * 1.3, 100)
            isoflop_axis.scatter(sizes, [p.loss for p in isoflop.points], color=colour, s=14)
            isoflop_axis.plot(grid, [isoflop.fitted(n) for n in grid], color=colour,
                              label=f"{isoflop.budget:.2g} FLOPs", gid=f"{result.model}:{isoflop.budget:g}")
            isoflop_axis.plot([isoflop.optimum], [isoflop.fitted(isoflop.optimum)], "*", color=colour, markersize=12)
        isoflop_axis.set(xscale="log", xlabel="parameters N", ylabel=f"best val/{y}",
                         title=f"{result.model}: IsoFLOP curves")
        isoflop_axis.legend(fontsize="small")
        budgets = [i.budget for i in result.isoflops]
        law_axis.scatter(budgets, [i.optimum for i in result.isoflops], color="black", label="N* of each budget")
        if result.law is not None:
            grid = np.geomspace(min(budgets) / 2, max(budgets) * 2, 50)
            law_axis.plot(grid, [result.law_optimum(c) for c in grid], color=colours[0], gid=f"{result.model}:law",
                          label=f"N* = {math.exp(result.law[1]):.3g} C^{result.law[0]:.3f}")
        law_axis.set(xscale="log", yscale="log", xlabel="budget C (FLOPs)", ylabel="compute-optimal parameters N*",
                     title=f"{result.model}: compute-optimal size")
        law_axis.legend(fontsize="small")
    figure.tight_layout()
    return figure
