"""`python -m lmzoo.generate`: the entry point is lmzoo.cli.generate."""

from lmzoo.cli.generate import main

if __name__ == "__main__":
    main()
