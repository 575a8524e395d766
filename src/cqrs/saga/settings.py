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

    ``compensation_commits``: how a failed saga records its compensations.
    ``"together"`` (the default): once the record that compensation began
    has committed, the compensations run and are recorded in one commit with
    the saga's final status (a 3-step saga failing at its last step commits
    5 times, not 6). A crash while they run loses their records: recovery
    runs all of them again, so each may run more than once (compensations
    must be idempotent anyway, since retries and crashes re-run them).
    ``"each"``: one commit per compensation, so after a crash only those
    not yet recorded run again; for long or costly compensations.
    """

    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    lease_seconds: float = 30.0
    sleep: typing.Callable[[float], typing.Awaitable[None]] = asyncio.sleep
    compensation_commits: typing.Literal["together", "each"] = "together"

    def __post_init__(self) -> None:
        if self.compensation_commits not in ("together", "each"):
            raise ValueError(
                f"EngineSettings.compensation_commits must be 'together' or 'each', got {self.compensation_commits!r}"
            )
        if not self.lease_seconds >= 0:
            raise ValueError(f"EngineSettings.lease_seconds must be zero or more, got {self.lease_seconds}")
