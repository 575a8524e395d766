"""``python -m cqrs``: the ``cqrs-saga`` command line (see `cqrs.cli`)."""

from cqrs.cli import main

if __name__ == "__main__":
    main()
