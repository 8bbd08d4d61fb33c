"""`python -m lmzoo.scaling`: the entry point is lmzoo.cli.scaling."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("scaling")


if __name__ == "__main__":
    main()
