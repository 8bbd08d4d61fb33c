"""`python -m lmzoo.generate`: the entry point is lmzoo.cli.generate."""

from lmzoo.cli import exit_without_teardown, run_command


def main() -> None:
    run_command("generate")


if __name__ == "__main__":
    main()
    exit_without_teardown()
