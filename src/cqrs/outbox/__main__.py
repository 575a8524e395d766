"""``python -m cqrs.outbox``: run an outbox relay (see `cqrs.outbox.cli`)."""

from __future__ import annotations

import sys

from cqrs.outbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
