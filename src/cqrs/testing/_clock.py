"""Time that moves only when a test says so: a clock for storages, a sleep for the engine."""

from __future__ import annotations

import datetime

__all__ = ["FakeClock", "FakeSleep"]


class FakeClock:
    """A wall clock for `MemorySagaStorage(clock=...)` that stands still until `advance` moves it.

    Lease expiry and saga ages follow it, so a test expires a lease by moving
    the clock rather than by waiting.
    """

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self.now = start or datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += datetime.timedelta(seconds=seconds)


class FakeSleep:
    """An async sleep for `EngineSettings(sleep=...)`: returns at once, moving ``clock`` by the delay.

    ``delays`` lists every delay asked for (retry backoff, in order).
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.clock is not None:
            self.clock.advance(delay)
