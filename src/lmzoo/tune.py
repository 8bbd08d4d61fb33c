"""`python -m lmzoo.tune`: the entry point is lmzoo.cli.tune."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("tune")


if __name__ == "__main__":
    main()
