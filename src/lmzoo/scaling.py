"""`python -m lmzoo.scaling`: the entry point is lmzoo.cli.scaling."""

from lmzoo.cli.scaling import main

if __name__ == "__main__":
    main()
