"""`python -m lmzoo.evaluate`: the entry point is lmzoo.cli.evaluate."""

from lmzoo.cli.evaluate import main

if __name__ == "__main__":
    main()
