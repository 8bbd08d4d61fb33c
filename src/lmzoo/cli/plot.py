"""python -m lmzoo.plot RUN_OR_SWEEP_DIR... [--x tokens|flops|time|state] [--y loss|bpb|accuracy] [--out FILE]: loss
(or accuracy) curves of runs from their TensorBoard logs, or each setting's best against its decoding state."""

import sys
from pathlib import Path

from lmzoo.cli import Arguments
from lmzoo.errors import report_user_errors
from lmzoo.reports.plot import X_AXES, find_summaries, image_format, load_runs, plot, plot_settings, plot_state, save


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = Arguments(prog="python -m lmzoo.plot", description=__doc__.split(": ", 1)[1].strip())
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--x", choices=list(X_AXES), help="draw val/loss (or --y) against this, seeds pooled; state: "
                        "at each decoding state, test/accuracy (or --y) of the setting validation chose, a panel per "
                        "task; without --x (and --y), the overview: train and val loss against steps and tokens")
    parser.add_argument("--y", choices=["loss", "bpb", "accuracy"],
                        help="val/loss (default; accuracy with --x state), val/bpb or val/accuracy, with --x (default "
                        "tokens)")
    parser.add_argument("--out", type=Path, default=Path("loss.png"), help="image to write (default loss.png)")
    args = parser.parse_args(argv)
    image_format(args.out)
    # The trade-off reads the runs' summaries; the curves, their TensorBoard logs.
    runs = find_summaries(args.folders) if args.x == "state" else load_runs(args.folders)
    if args.x == "state":
        save(plot_state(runs, args.y or "accuracy"), args.out)
    elif args.x is None and args.y is None:
        save(plot(runs), args.out)
    else:
        x = args.x or "tokens"
        figure, left_out = plot_settings(runs, x, args.y or "loss")
        if left_out:
            print(f"warning: left out {len(left_out)} run(s) that do not record their {X_AXES[x]}: "
                  f"{', '.join(left_out)}", file=sys.stderr)
        save(figure, args.out)
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) > 1 else ''})", file=sys.stderr)
