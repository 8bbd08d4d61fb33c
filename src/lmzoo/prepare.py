"""`python -m lmzoo.prepare`: the entry point is lmzoo.cli.prepare."""

from lmzoo.cli.prepare import main

if __name__ == "__main__":
    main()
