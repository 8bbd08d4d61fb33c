"""`python -m lmzoo.describe`: the entry point is lmzoo.cli.describe."""

from lmzoo.cli.describe import main

if __name__ == "__main__":
    main()
