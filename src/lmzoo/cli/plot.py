"""python -m lmzoo.plot RUN_OR_SWEEP_DIR... [--x tokens|flops|time] [--y loss|bpb] [--out loss.png]: loss curves
of runs from their TensorBoard logs."""

import sys
from pathlib import Path

from lmzoo.cli import Arguments
from lmzoo.errors import report_user_errors
from lmzoo.reports.plot import X_AXES, image_format, load_runs, plot, plot_settings, save


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = Arguments(prog="python -m lmzoo.plot", description=__doc__.split(": ", 1)[1].strip())
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--x", choices=list(X_AXES), help="draw val/loss (or --y) against this, seeds pooled; "
                        "without --x (and --y), the overview: train and val loss against steps and tokens")
    parser.add_argument("--y", choices=["loss", "bpb"], help="val/loss (default) or val/bpb, with --x (default tokens)")
    parser.add_argument("--out", type=Path, default=Path("loss.png"), help="image to write (default loss.png)")
    args = parser.parse_args(argv)
    image_format(args.out)
    runs = load_runs(args.folders)
    if args.x is None and args.y is None:
        save(plot(runs), args.out)
    else:
        x = args.x or "tokens"
        figure, left_out = plot_settings(runs, x, args.y or "loss")
        if left_out:
            print(f"warning: left out {len(left_out)} run(s) that do not record their {X_AXES[x]}: "
                  f"{', '.join(left_out)}", file=sys.stderr)
        save(figure, args.out)
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) > 1 else ''})", file=sys.stderr)
