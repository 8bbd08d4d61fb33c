"""`python -m lmzoo.prepare`: the entry point is lmzoo.cli.prepare."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("prepare")


if __name__ == "__main__":
    main()
