"""`python -m lmzoo.compare`: the entry point is lmzoo.cli.compare."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("compare")


if __name__ == "__main__":
    main()
