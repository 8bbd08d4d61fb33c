"""`python -m lmzoo.plot`: the entry point is lmzoo.cli.plot."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("plot")


if __name__ == "__main__":
    main()
