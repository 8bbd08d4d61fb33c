"""python -m lmzoo.scaling SWEEP_DIR [--y loss|bpb] [--out PNG]: the compute-optimal model size of each budget
(IsoFLOP parabolas) and its power law across budgets, from a sweep over sizes and budgets."""

import sys
from pathlib import Path

from lmzoo.cli.plot import Arguments
from lmzoo.errors import report_user_errors
from lmzoo.reports.plot import image_format, save
from lmzoo.reports.scaling import describe, fit_sweep, plot_scaling


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = Arguments(prog="python -m lmzoo.scaling", description=__doc__.split(": ", 1)[1].strip())
    parser.add_argument("sweep", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--y", choices=["loss", "bpb"], default="loss", help="fit best val/loss (default) or val/bpb")
    parser.add_argument("--out", type=Path, help="image of the IsoFLOP curves (default SWEEP_DIR/scaling.png)")
    args = parser.parse_args(argv)
    out = args.out or args.sweep / "scaling.png"
    image_format(out)
    results = fit_sweep(args.sweep, args.y)
    print("\n\n".join(describe(result, args.y) for result in results))
    save(plot_scaling(results, args.y), out)
    print(f"wrote {out}", file=sys.stderr)
