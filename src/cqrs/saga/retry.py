"""Retry policies for step actions and compensations."""

from __future__ import annotations

import dataclasses

__all__ = ["RetryPolicy"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an operation.

    ``attempts`` counts every try, the first included (``attempts=1`` means no
    retry). The n-th retry waits ``delay * backoff ** (n - 1)`` seconds, capped
    at ``max_delay``. Only exceptions that are instances of ``retry_on`` are
    retried; anything else fails at once.
    """

    attempts: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.delay < 0 or self.backoff < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs delay >= 0, backoff >= 1 and max_delay >= 0")

    def delay_before(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        return float(min(self.delay * self.backoff ** (retry_number - 1), self.max_delay))

    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(attempts=1, delay=0.0)
