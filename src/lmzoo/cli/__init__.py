"""Entry points: each composes its config and calls library code. `python -m lmzoo.NAME` runs lmzoo.cli.NAME."""
