"""`python -m lmzoo.plot`: the entry point is lmzoo.cli.plot."""

from lmzoo.cli.plot import main

if __name__ == "__main__":
    main()
