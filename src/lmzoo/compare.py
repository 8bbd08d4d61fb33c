"""`python -m lmzoo.compare`: the entry point is lmzoo.cli.compare."""

from lmzoo.cli.compare import main

if __name__ == "__main__":
    main()
