"""python -m lmzoo.compare SWEEP_DIR... [--out DIR]: the comparison of a sweep (comparison.md, report.md), rebuilt
from its runs; or of several sweeps' runs pooled, such as one study's budgets run as separate sweeps."""

import sys
from pathlib import Path

from lmzoo.cli import Arguments
from lmzoo.errors import report_user_errors
from lmzoo.reports.compare import compare_sweeps
from lmzoo.reports.report import write_combined_report, write_report
from lmzoo.reports.tune import check_not_a_tune


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = Arguments(prog="python -m lmzoo.compare", description=__doc__.split(": ", 1)[1].strip())
    parser.add_argument("sweeps", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, help="a new folder for the comparison.md, report.md and figure of "
                        "several sweeps (default: one sweep's own folder; several sweeps' comparison is only printed)")
    args = parser.parse_args(argv)
    for sweep in args.sweeps:
        check_not_a_tune(sweep)
    if args.out is not None:
        print(write_combined_report(args.sweeps, args.out))
    elif len(args.sweeps) == 1:
        print(write_report(args.sweeps[0]))
    else:
        print(compare_sweeps(args.sweeps, None))
        print("(printed only: each sweep folder's comparison.md describes its own runs; --out DIR writes this one "
              "to DIR)", file=sys.stderr)
