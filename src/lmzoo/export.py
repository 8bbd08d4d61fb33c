"""`python -m lmzoo.export`: the entry point is lmzoo.cli.export."""

from lmzoo.cli.export import main

if __name__ == "__main__":
    main()
