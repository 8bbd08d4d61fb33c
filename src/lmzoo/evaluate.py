"""`python -m lmzoo.evaluate`: the entry point is lmzoo.cli.evaluate."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("evaluate")


if __name__ == "__main__":
    main()
