"""python -m lmzoo.compare SWEEP_DIR: the comparison of a sweep (comparison.md, report.md), rebuilt from its runs."""

import sys

from lmzoo.errors import UserError, report_user_errors
from lmzoo.reports.report import write_report


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m lmzoo.compare SWEEP_DIR")
    print(write_report(args[0]))
