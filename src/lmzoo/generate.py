"""`python -m lmzoo.generate`: the entry point is lmzoo.cli.generate."""

from lmzoo.cli import run_command


def main() -> None:
    run_command("generate")


if __name__ == "__main__":
    main()
