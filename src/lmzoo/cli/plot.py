"""python -m lmzoo.plot RUN_OR_SWEEP_DIR... [--out loss.png]: loss curves of runs from their TensorBoard logs."""

import argparse
import sys
from pathlib import Path

from lmzoo.errors import UserError, report_user_errors
from lmzoo.reports.plot import image_format, load_runs, plot, save


class Arguments(argparse.ArgumentParser):
    """argparse whose mistakes are lmzoo's one line, `error: ...`, rather than its usage and a second line."""

    def error(self, message: str):
        raise UserError(f"{message}; usage: {' '.join(self.format_usage().split()[1:])}")


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = Arguments(prog="python -m lmzoo.plot", description=__doc__.split(":")[1].strip())
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=Path("loss.png"), help="image to write (default loss.png)")
    args = parser.parse_args(argv)
    image_format(args.out)
    runs = load_runs(args.folders)
    save(plot(runs), args.out)
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) > 1 else ''})", file=sys.stderr)
