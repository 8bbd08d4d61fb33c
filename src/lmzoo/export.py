"""`python -m lmzoo.export`: the entry point is lmzoo.cli.export."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("export")


if __name__ == "__main__":
    main()
