"""Circuit breakers for `Fallback` steps.

A breaker is keyed by step name, so one adapter instance can guard several
steps without their failures mixing.
"""

from __future__ import annotations

import datetime
import typing

__all__ = ["AioBreakerAdapter", "CircuitBreaker", "CircuitOpenError"]

T = typing.TypeVar("T")


class CircuitOpenError(RuntimeError):
    """The breaker for this step is open: the call was not attempted."""

    def __init__(self, step_name: str) -> None:
        self.step_name = step_name
        super().__init__(f"Circuit breaker for step {step_name!r} is open")


@typing.runtime_checkable
class CircuitBreaker(typing.Protocol):
    """What a `Fallback` needs from a circuit breaker."""

    def is_open(self, step_name: str) -> bool:
        """Whether calls to this step are being refused right now."""

    async def call(self, step_name: str, func: typing.Callable[[], typing.Awaitable[T]]) -> T:
        """Run ``func`` through the step's breaker.

        Raises `CircuitOpenError` if the breaker refuses the call; otherwise
        ``func``'s own exception passes through unchanged.
        """


class AioBreakerAdapter:
    """A `CircuitBreaker` backed by aiobreaker, one breaker per step.

    ``exclude`` lists business exceptions that pass through without counting
    as failures (a declined card should not open the payment breaker).

    ``storage_factory`` says where each breaker keeps its state: it is called
    with the breaker's name (the step name) the first time that step's breaker
    is needed, and returns an aiobreaker ``CircuitBreakerStorage``. The default
    keeps it in this process's memory; aiobreaker's ``CircuitRedisStorage``
    shares one breaker between every process that uses the same Redis keys::

        def redis_storage(name: str) -> CircuitRedisStorage:
            return CircuitRedisStorage(CircuitBreakerState.CLOSED, redis.Redis(), namespace=name)

        AioBreakerAdapter(fail_max=3, timeout_duration=30, storage_factory=redis_storage)
    """

    def __init__(
        self,
        fail_max: int = 5,
        timeout_duration: float | datetime.timedelta = 60,
        exclude: typing.Iterable[type[BaseException]] | None = None,
        storage_factory: typing.Callable[[str], typing.Any] | None = None,
    ) -> None:
        try:
            import aiobreaker
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise ImportError(
                "AioBreakerAdapter needs aiobreaker: pip install 'cqrs-saga[aiobreaker]'"
            ) from exc
        self._aiobreaker = aiobreaker
        self._fail_max = fail_max
        self._timeout = (
            timeout_duration
            if isinstance(timeout_duration, datetime.timedelta)
            else datetime.timedelta(seconds=timeout_duration)
        )
        self._exclude = list(exclude or ())
        self._storage_factory = storage_factory
        self._breakers: dict[str, tuple[typing.Any, typing.Any]] = {}

    def _breaker(self, step_name: str) -> tuple[typing.Any, typing.Any]:
        """The step's aiobreaker breaker and the storage it keeps its state in (made on first use)."""
        found = self._breakers.get(step_name)
        if found is None:
            if self._storage_factory is None:
                from aiobreaker.storage.memory import CircuitMemoryStorage

                storage = CircuitMemoryStorage(self._aiobreaker.CircuitBreakerState.CLOSED)
            else:
                storage = self._storage_factory(step_name)
            breaker = self._aiobreaker.CircuitBreaker(
                fail_max=self._fail_max,
                # aiobreaker reads a zero timedelta as "use the 60 s default".
                timeout_duration=max(self._timeout, datetime.timedelta(microseconds=1)),
                exclude=self._exclude,
                state_storage=storage,
                name=step_name,
            )
            found = self._breakers[step_name] = (breaker, storage)
        return found

    def is_open(self, step_name: str) -> bool:
        breaker, storage = self._breaker(step_name)
        # Read from the storage: with a shared one, another process may have opened the breaker.
        if storage.state != self._aiobreaker.CircuitBreakerState.OPEN:
            return False
        # Once the timeout has elapsed the next call is a trial call, so the breaker counts as closed.
        # (aiobreaker records opened_at in naive UTC; its own opens_at compares it with local time.)
        opened_at = storage.opened_at
        return opened_at is not None and _utcnow() < opened_at + breaker.timeout_duration

    async def call(self, step_name: str, func: typing.Callable[[], typing.Awaitable[T]]) -> T:
        breaker, _ = self._breaker(step_name)
        try:
            return typing.cast(T, await breaker.call_async(func))
        except self._aiobreaker.CircuitBreakerError as exc:
            if exc.__cause__ is not None:
                # The call itself failed and tripped the breaker: report the real error.
                raise exc.__cause__ from None
            raise CircuitOpenError(step_name) from None


def _utcnow() -> datetime.datetime:
    # aiobreaker keeps naive UTC datetimes.
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
