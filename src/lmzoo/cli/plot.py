"""python -m lmzoo.plot RUN_OR_SWEEP_DIR... [--out loss.png]: loss curves of runs from their TensorBoard logs."""

import argparse
import sys
from pathlib import Path

from lmzoo.errors import report_user_errors
from lmzoo.reports.plot import load_runs, plot


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmzoo.plot", description=__doc__.split(":")[1].strip())
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=Path("loss.png"), help="PNG to write (default loss.png)")
    args = parser.parse_args(argv)
    runs = load_runs(args.folders)
    figure = plot(runs)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) > 1 else ''})", file=sys.stderr)
