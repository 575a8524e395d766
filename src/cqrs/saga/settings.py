"""Engine settings: the knobs shared by every run a mediator builds."""

from __future__ import annotations

import asyncio
import dataclasses
import typing

from cqrs.saga.retry import RetryPolicy

__all__ = ["DEFAULT_COMPENSATION_RETRY", "EngineSettings"]

#: Compensations are retried 3 times in all, 1 s then 2 s apart, unless a saga or mediator says otherwise.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=3, delay=1.0, backoff=2.0)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Knobs shared by every run a mediator (and its recovery workers) starts.

    ``compensation_retry``: how compensations are retried unless the saga sets
    its own. ``lease_seconds``: how long a crashed runner keeps its sagas
    before recovery may take them over (a live runner renews it). ``sleep``:
    what waits go through (tests pass a fake one to skip real waiting).
    """

    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    lease_seconds: float = 30.0
    sleep: typing.Callable[[float], typing.Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        if not self.lease_seconds >= 0:
            raise ValueError(f"EngineSettings.lease_seconds must be zero or more, got {self.lease_seconds}")
