"""Entry points: each composes its config and calls library code. `python -m lmzoo.NAME` runs lmzoo.cli.NAME."""

import argparse
import atexit
import gc
import importlib
import os
import sys

from lmzoo.errors import UserError
from lmzoo.machine import hold_instruction_set


def run_command(name: str) -> None:
    """Import lmzoo.cli.NAME with Python's cyclic garbage collector off, then call its main.

    torch, Hydra and their dependencies make some 280,000 objects as they load, and little garbage: the
    collector would walk them all again and again while they load, and in every later full collection (during
    Lightning's import in `train`, at exit). That was 0.9 s of `generate` and 0.35 s before `train`'s first
    step on a 2-core VM (bench/README.md). `gc.freeze` leaves them out of later collections; the few thousand
    objects in import cycles among them are never freed. The command itself runs with the collector on.

    `repro=true` on the command line holds the kernels at AVX2 here, before the command's modules load torch.
    """
    hold_instruction_set(sys.argv[1:])
    gc.disable()
    try:
        main = importlib.import_module(f"lmzoo.cli.{name}").main
    finally:
        gc.freeze()
        gc.enable()
    try:
        main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of the output stopped reading (`| head`): stop as a Unix tool does, without a traceback, with
        # stdout pointed at nothing so that Python's own flush at exit does not raise it again (the recipe of
        # Python's signal documentation, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def exit_without_teardown() -> None:
    """End a command that has written all it writes, as Python would but for tearing the interpreter down: that frees
    torch's and Hydra's objects one by one, 0.1 s of the 1.7 s `python -m lmzoo.generate` takes on a 2-core Zen 4
    (bench/README.md), and nothing else needs it. The exit handlers run; output that cannot be flushed (a closed
    pipe) leaves the ending to Python, as before."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    atexit._run_exitfuncs()
    os._exit(0)


class Arguments(argparse.ArgumentParser):
    """argparse whose mistakes are lmzoo's one line, `error: ...`, rather than its usage and a second line."""

    def error(self, message: str):
        raise UserError(f"{message}; usage: {' '.join(self.format_usage().split()[1:])}")
