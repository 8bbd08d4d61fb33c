"""`python -m lmzoo.train`: the entry point is lmzoo.cli.train."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("train")


if __name__ == "__main__":
    main()
