"""`python -m lmzoo.describe`: the entry point is lmzoo.cli.describe."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("describe")


if __name__ == "__main__":
    main()
