"""`python -m lmzoo.train`: the entry point is lmzoo.cli.train."""

from lmzoo.cli.train import main

if __name__ == "__main__":
    main()
