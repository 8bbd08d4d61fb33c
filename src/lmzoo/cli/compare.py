"""python -m lmzoo.compare SWEEP_DIR: the comparison table of a sweep, rebuilt from its runs' summaries."""

import sys

from lmzoo.errors import UserError, report_user_errors
from lmzoo.reports.compare import compare


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m lmzoo.compare SWEEP_DIR")
    print(compare(args[0]))
