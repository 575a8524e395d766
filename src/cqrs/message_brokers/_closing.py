"""`CloseCount`: how a broker adapter's connect learns that a ``close()`` overtook it."""

from __future__ import annotations

__all__ = ["CloseCount"]


class CloseCount:
    """How many times an adapter's ``close()`` ran.

    A connect reads `value` before it starts and calls `check` once it has its
    connection: a ``close()`` in between (which does not wait for a connect,
    that may hang as long as the network lets it) voids what it opened.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def closed(self) -> None:
        """``close()`` runs."""
        self.value += 1

    def check(self, seen: int, what: str) -> None:
        """Raise ``ConnectionError`` if ``close()`` ran since `value` was ``seen`` (``what`` names the connection)."""
        if self.value != seen:
            raise ConnectionError(f"{what} was closed while it was being opened")
