"""The saga state machine: the one path every run takes.

Streams, background runs, recovery and the integrations all drive a `SagaRun`.
A run owns its saga through a storage lease; every write after the start is a
checkpoint conditional on that lease, so a runner that lost the saga to another
one stops without writing.

Checkpoints per saga: one to start, one per completed step (the last one also
stores the final status), and on failure one to enter compensation plus one
per compensated step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import socket
import typing
import uuid
import weakref

from cqrs import correlation
from cqrs.adapters.circuit_breaker import CircuitOpenError
from cqrs.container import Container
from cqrs.response import Response
from cqrs.saga import _serialization
from cqrs.saga.exceptions import (
    SagaAlreadyRunningError,
    SagaCompensatedError,
    SagaDeadlineExceededError,
    SagaIdConflictError,
    SagaNotFoundError,
    SagaNotRunnableError,
    SagaOwnershipLostError,
    SagaStepTimeoutError,
    StepContractError,
    UnknownSagaError,
)
from cqrs.saga.fallback import Fallback
from cqrs.saga.retry import NO_RETRY, RetryPolicy
from cqrs.saga.saga import Saga, SagaEntry, StepType
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, SagaLogEntry, SagaRecord, StepEntry
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.events import EventDispatcher

logger = logging.getLogger("cqrs.saga")

T = typing.TypeVar("T")
JsonDict = dict[str, typing.Any]
Step = SagaStepHandler[typing.Any, typing.Any]
Result = SagaStepResult[typing.Any, typing.Any]

DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=3, delay=1.0, backoff=2.0)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Knobs shared by every run a mediator or recovery worker starts."""

    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    lease_seconds: float = 30.0
    sleep: typing.Callable[[float], typing.Awaitable[None]] = asyncio.sleep


@dataclasses.dataclass(frozen=True)
class SagaEvent:
    """A progress notification from a run, for listeners (SSE streams, audit logs).

    ``kind`` is one of ``started``, ``resumed``, ``step_completed``,
    ``step_failed``, ``compensating``, ``step_compensated``,
    ``compensation_failed``, ``completed``, ``failed``.
    """

    kind: str
    saga_id: uuid.UUID
    step_name: str | None = None
    response: Response | None = None
    error: str | None = None
    replayed: bool = False
    status: SagaStatus | None = None


Listener = typing.Callable[[SagaEvent], None]

_owner: tuple[int, str] | None = None


def process_owner() -> str:
    """This process's lease owner id (host, pid and a random part; new after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


class _LocalRuns:
    """Runs of this process, so two coroutines never advance one saga together.

    The storage lease is per process; this is the per-coroutine guard under it.
    The newest claim wins: a paused stream superseded by a newer one stops.

    ``advancing`` names the run that is inside the engine for a saga: claiming
    it from the storage (`reserve`) or running a step or compensation (`hold_latest`).
    A run claims only while no other run of this process is advancing the
    saga: a claim by this process's owner bumps the lease epoch, which would
    fence a run that is mid-step, so its step would run again.
    """

    # Keyed by ``saga_id.int``: hashing a UUID runs Python code, and these run several times a step.

    def __init__(self) -> None:
        self.latest: dict[int, object] = {}
        self.advancing: dict[int, object] = {}

    def _busy(self, key: int, token: object) -> bool:
        holder = self.advancing.get(key)
        return holder is not None and holder is not token

    def reserve(self, saga_id: uuid.UUID, token: object) -> None:
        """Before claiming from the storage: refuse if another run is advancing the saga, else block them."""
        key = saga_id.int
        if self._busy(key, token):
            raise SagaAlreadyRunningError(saga_id)
        self.advancing[key] = token

    def claim(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self._busy(key, token):
            raise SagaAlreadyRunningError(saga_id)
        self.latest[key] = token

    def hold_latest(self, saga_id: uuid.UUID, token: object) -> bool:
        """Before a step or compensation: whether ``token`` still has the newest claim.

        Raises if another run of this process is advancing the saga now (it claimed it since).
        """
        key = saga_id.int
        if self._busy(key, token):
            raise SagaOwnershipLostError(saga_id)
        self.advancing[key] = token
        return self.latest.get(key) is token

    def pause(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self.advancing.get(key) is token:
            del self.advancing[key]

    def is_latest(self, saga_id: uuid.UUID, token: object) -> bool:
        return self.latest.get(saga_id.int) is token

    def forget(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self.latest.get(key) is token:
            del self.latest[key]
        if self.advancing.get(key) is token:
            del self.advancing[key]


_local_runs = _LocalRuns()


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Ticker:
    """One timer per event loop and lease length, for every run whose action is running.

    It ticks every ``lease_seconds / 6`` while any action runs. An action that
    has run across two ticks has its lease renewed, and then every two ticks
    again: a renewal comes within ``lease_seconds / 3`` of the action's start
    and every ``lease_seconds / 3`` after. A run of short actions costs a
    dict entry per action and no timer of its own.
    """

    __slots__ = ("_handle", "acting", "interval", "ticks")

    # No reference to its loop: `_tickers` holds tickers by a weak reference to the loop.
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticks = 0
        #: Each acting run's heartbeat, and the tick count when it started acting or last renewed.
        self.acting: dict[_Heartbeat, int] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, heartbeat: _Heartbeat) -> None:
        self.acting[heartbeat] = self.ticks
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._handle = None
        if not self.acting:
            return  # re-armed by the next action
        self.ticks = ticks = self.ticks + 1
        for heartbeat, since in list(self.acting.items()):
            if ticks - since >= 2 and heartbeat.renew():
                self.acting[heartbeat] = ticks
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Ticker]] = weakref.WeakKeyDictionary()
#: The tickers of loops that cannot be weakly referenced (kept as long as the process).
_pinned_tickers: dict[asyncio.AbstractEventLoop, dict[float, _Ticker]] = {}


def tickers_of(loop: asyncio.AbstractEventLoop) -> dict[float, _Ticker]:
    """The tickers of ``loop``, by lease length."""
    try:
        by_lease = _tickers.get(loop)
        if by_lease is None:
            by_lease = _tickers[loop] = {}
    except TypeError:  # no weak references to this loop type
        by_lease = _pinned_tickers.setdefault(loop, {})
    return by_lease


def _ticker(lease_seconds: float) -> _Ticker:
    by_lease = tickers_of(asyncio.get_running_loop())
    ticker = by_lease.get(lease_seconds)
    if ticker is None:
        ticker = by_lease[lease_seconds] = _Ticker(lease_seconds / 6)
    return ticker


class _Heartbeat:
    """Renews a run's lease while one of its actions (``act`` or ``compensate``) runs.

    One per run, used as ``async with`` around an action (or `begin` / `end`
    on the hot path); the loop's `_Ticker` decides when.
    """

    __slots__ = ("_run", "_task", "_ticker")

    def __init__(self, run: SagaRun) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None
        self._ticker: _Ticker | None = None

    def begin(self) -> None:
        """An action starts."""
        ticker = self._ticker
        if ticker is None:
            ticker = self._ticker = _ticker(self._run.settings.lease_seconds)
        ticker.add(self)

    def end(self) -> asyncio.Future[None] | None:
        """An action ended; await what this returns (if anything) before the next write."""
        if self._ticker is not None:
            self._ticker.acting.pop(self, None)
        task = self._task
        if task is not None and not task.done():
            # The next write must not race a renewal of the same lease.
            return asyncio.shield(task)
        return None

    async def __aenter__(self) -> None:
        self.begin()

    async def __aexit__(self, *exc: object) -> None:
        renewal = self.end()
        if renewal is not None:
            await renewal

    def renew(self) -> bool:
        """Start renewing the lease, unless a renewal is still under way or the lease is lost;
        says whether it started one."""
        if self._run.lease_lost or (self._task is not None and not self._task.done()):
            return False
        self._task = asyncio.get_running_loop().create_task(self._renew())
        return True

    async def _renew(self) -> None:
        try:
            await self._run.renew_lease()
        except SagaOwnershipLostError:
            return
        except Exception:
            logger.warning("Could not renew the lease of saga %s; will retry", self._run.saga_id, exc_info=True)


@dataclasses.dataclass(slots=True)
class _Done:
    """A step completed in this run or an earlier one."""

    index: int
    step_type: StepType
    instance: Step | None
    response: JsonDict | None


class SagaRun:
    """One attempt to advance one saga, from wherever it stands, as far as it goes."""

    __slots__ = (
        "_busy", "_current_step", "_heartbeat", "_lease_fresh_until", "_token", "compensation_retry",
        "container", "context", "context_builder", "correlation_id", "created_at", "dispatcher", "error",
        "history", "lease", "lease_lost", "listener", "owner", "saga_id", "saga_type", "settings", "status",
        "storage",
    )

    def __init__(
        self,
        saga_type: type[Saga[typing.Any]],
        saga_id: uuid.UUID,
        *,
        storage: SagaStorage,
        container: Container,
        settings: EngineSettings,
        dispatcher: EventDispatcher | None = None,
        listener: Listener | None = None,
        correlation_id: str | None = None,
        compensation_retry: RetryPolicy | None = None,
        context_builder: typing.Callable[[JsonDict], typing.Any] | None = None,
    ) -> None:
        self.saga_type = saga_type
        self.saga_id = saga_id
        self.storage = storage
        self.container = container
        self.settings = settings
        self.dispatcher = dispatcher
        self.listener = listener
        self.correlation_id = correlation_id
        self.compensation_retry = (
            compensation_retry or saga_type.compensation_retry or settings.compensation_retry
        )
        self.context_builder = context_builder
        self.owner = process_owner()
        self.context: typing.Any = None
        self.lease: Lease | None = None
        self.status: SagaStatus = SagaStatus.RUNNING
        self.error: str | None = None
        self.history: list[SagaLogEntry] = []
        self.created_at: datetime.datetime | None = None
        self.lease_lost = False
        self._busy = False
        self._lease_fresh_until = 0.0
        self._token = object()
        self._current_step: str | None = None
        self._heartbeat = _Heartbeat(self)

    # -- opening -----------------------------------------------------------------

    async def open_new(self, context: typing.Any) -> None:
        """Record a new saga, or take up the stored one if this id exists."""
        context_json = _serialization.dump_context(context)
        new = NewSaga(
            saga_id=self.saga_id,
            name=self.saga_type.name,
            context=context_json,
            definition_version=self.saga_type.version,
            correlation_id=self.correlation_id,
        )
        _local_runs.reserve(self.saga_id, self._token)
        try:
            lease = await self.storage.start_saga(new, self.owner, self.settings.lease_seconds)
        finally:
            _local_runs.pause(self.saga_id, self._token)
        if lease is None:
            await self.open_existing()
            return
        self._granted(lease)
        self.context = context
        if self.saga_type.deadline is not None:  # the deadline counts from here (read only for it)
            self.created_at = datetime.datetime.now(datetime.timezone.utc)
        self._emit("started")

    async def open_existing(self) -> None:
        """Claim a stored saga so it can be advanced (or replayed, if final)."""
        # Reserved across the claim: a claim by this process's owner would fence a run of this
        # process that is mid-step (its step would then run again), so it is refused instead.
        _local_runs.reserve(self.saga_id, self._token)
        try:
            claim = await self.storage.claim_saga(self.saga_id, self.owner, self.settings.lease_seconds)
        finally:
            _local_runs.pause(self.saga_id, self._token)
        if claim is None:
            raise SagaNotFoundError(self.saga_id)
        self._busy = claim.busy
        self.adopt(claim.record, claim.history, claim.lease)

    def adopt(self, record: SagaRecord, history: list[SagaLogEntry], lease: Lease | None) -> None:
        """Take up a stored saga whose lease (if any) the caller already holds."""
        if record.name != self.saga_type.name:
            raise SagaIdConflictError(
                f"Saga id {self.saga_id} belongs to saga {record.name!r}, not {self.saga_type.name!r}"
            )
        self.status = record.status
        self.error = record.error
        self.history = history
        self.created_at = record.created_at
        if self.correlation_id is None:
            self.correlation_id = record.correlation_id
        if lease is not None:
            self._granted(lease)
        self.context = self._load_context(record.context)
        if lease is not None:
            self._emit("resumed")

    def _load_context(self, data: JsonDict) -> typing.Any:
        if self.context_builder is not None and not (
            isinstance(self.context_builder, type) and _serialization.is_context_type(self.context_builder)
        ):
            return self.context_builder(data)
        context_type = self.context_builder or self.saga_type.context_type
        if context_type is None:
            raise UnknownSagaError(
                f"Saga {self.saga_type.__qualname__} declares no context type; subclass Saga[YourContext]"
            )
        return _serialization.load_context(context_type, data, saga_id=self.saga_id)

    def _granted(self, lease: Lease) -> None:
        self.lease = lease
        self._lease_fresh_until = asyncio.get_running_loop().time() + self.settings.lease_seconds / 2

    # -- the state machine ------------------------------------------------------------

    async def advance(self) -> typing.AsyncIterator[Result]:
        """Yield stored results first (``replayed=True``), then each newly completed step.

        Raises the failing step's own error once its saga is compensated.
        """
        if self.lease is None:
            async for result in self._finished():
                yield result
            return
        _local_runs.claim(self.saga_id, self._token)
        try:
            done = self._done_steps()
            for item in done:
                yield self._replayed_result(item)
            if self.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
                self._hold()
                await self._compensate([d for d in reversed(done) if d.step_type.name not in self._compensated()])
                raise SagaCompensatedError(self.saga_id, self.status.value, self.error)
            if self.status == SagaStatus.PENDING:
                self.status = SagaStatus.RUNNING
            steps = self.saga_type.steps
            start = done[-1].index + 1 if done else 0
            for index in range(start, len(steps)):
                self._hold()
                if asyncio.get_running_loop().time() > self._lease_fresh_until:
                    await self.renew_lease()
                result = await self._forward(index, steps[index], done)
                _local_runs.pause(self.saga_id, self._token)
                yield result
            if not steps[start:]:
                # Every step was recorded but the final status was not (a definition
                # that shrank, or a crash between two writes of an older version).
                self._hold()
                await self._checkpoint(None, status=SagaStatus.COMPLETED, release=True)
                self.status = SagaStatus.COMPLETED
        finally:
            _local_runs.forget(self.saga_id, self._token)

    async def _finished(self) -> typing.AsyncIterator[Result]:
        if self._busy:
            raise SagaAlreadyRunningError(self.saga_id)
        if self.status == SagaStatus.COMPLETED:
            for item in self._done_steps():
                yield self._replayed_result(item)
            return
        if self.status == SagaStatus.FAILED:
            raise SagaCompensatedError(self.saga_id, self.status.value, self.error)
        raise SagaNotRunnableError(self.saga_id, self.status.value, self.error)

    async def _forward(self, index: int, entry: SagaEntry, done: list[_Done]) -> Result:
        try:
            if self.saga_type.deadline is not None:
                self._check_deadline()
            if isinstance(entry, Fallback):
                step_type, instance, result = await self._run_fallback(entry)
            else:
                step_type = entry
                instance = await self._resolve(entry)
                result = await self._act(entry, instance)
        except (asyncio.CancelledError, SagaOwnershipLostError):
            raise
        except Exception as error:
            await self._fail(done, error, self._current_step or _entry_name(entry))
            raise
        if self.lease_lost:
            raise SagaOwnershipLostError(self.saga_id)
        try:
            response_json = _serialization.dump_response(result.response)
            context_json = _serialization.dump_context(self.context)
        except Exception as error:
            # The action ran, so its effect is undone along with the earlier steps'.
            done.append(_Done(index, step_type, instance, None))
            await self._fail(done, error, step_type.name)
            raise
        last = index == len(self.saga_type.steps) - 1
        details = _fallback_note(entry, step_type)
        await self._checkpoint(
            StepEntry(step_type.name, "act", SagaStepStatus.COMPLETED, details, response_json),
            context=context_json,
            status=SagaStatus.COMPLETED if last else None,
            release=last,
        )
        done.append(_Done(index, step_type, instance, response_json))
        if last:
            self.status = SagaStatus.COMPLETED
        if self.dispatcher is not None:
            events = instance.events
            if events:
                await self.dispatcher.dispatch(events)
        if self.listener is not None:
            self._emit("step_completed", step_type.name, response=result.response)
            if last:
                self._emit("completed")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Saga %s: step %s completed", self.saga_id, step_type.name)
        if result.saga_id is None:
            # `_generate_step_result` made it for this call; a result handed out before keeps its id.
            result.saga_id = self.saga_id
            return result
        return dataclasses.replace(result, saga_id=self.saga_id)

    async def _run_fallback(self, entry: Fallback) -> tuple[StepType, Step, Result]:
        breaker = entry.circuit_breaker
        primary = entry.step
        if breaker is None or not breaker.is_open(primary.name):
            snapshot = _serialization.dump_context(self.context)
            try:
                instance = await self._resolve(primary)
                if breaker is None:
                    result = await self._act(primary, instance)
                else:
                    result = await breaker.call(primary.name, lambda: self._act(primary, instance))
                return primary, instance, result
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                if not (isinstance(error, CircuitOpenError) or entry.handles(error)):
                    raise
                logger.warning(
                    "Saga %s: step %s failed (%s); running fallback %s",
                    self.saga_id, primary.name, error_text(error), entry.fallback.name,
                )
                self._emit("step_failed", primary.name, error=error_text(error))
                _serialization.restore_in_place(self.context, snapshot)
        instance = await self._resolve(entry.fallback)
        return entry.fallback, instance, await self._act(entry.fallback, instance)

    def _resolve(self, step_type: StepType) -> typing.Awaitable[Step]:
        # Not a coroutine itself: one layer less on every step.
        self._current_step = step_type.name
        return self.container.resolve(step_type)

    async def _act(self, step_type: StepType, instance: Step) -> Result:
        self._current_step = step_type.name
        policy = step_type.retry or NO_RETRY
        heartbeat = self._heartbeat
        heartbeat.begin()
        try:
            return await self._retry(policy, step_type.name, "act", self._attempt, step_type, instance)
        finally:
            renewal = heartbeat.end()
            if renewal is not None:
                await renewal

    async def _attempt(self, step_type: StepType, instance: Step) -> Result:
        events = getattr(instance, "_events", None)
        events_before = len(events) if isinstance(events, list) else 0
        try:
            if step_type.timeout is None and self.saga_type.deadline is None:
                result = await instance.act(self.context)
            else:
                result = await self._with_deadline(step_type, instance.act(self.context))
        except BaseException:
            # A failed attempt's events describe something that did not happen.
            if isinstance(events, list):
                del events[events_before:]
            raise
        if not isinstance(result, SagaStepResult):
            raise StepContractError(
                f"{step_type.__qualname__}.act returned {result!r}; return "
                "self._generate_step_result(response)"
            )
        return result

    async def _with_deadline(self, step_type: StepType, action: typing.Awaitable[T]) -> T:
        timeout = step_type.timeout
        remaining = self._deadline_remaining()
        by_deadline = remaining is not None and (timeout is None or remaining < timeout)
        limit = remaining if by_deadline else timeout
        if limit is None:
            return await action
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await asyncio.wait_for(action, max(limit, 0.0))
        except asyncio.TimeoutError as exc:
            if loop.time() - started < limit:
                raise  # the step's own TimeoutError
            if by_deadline:
                raise SagaDeadlineExceededError(
                    f"Saga {self.saga_id} passed its deadline during step {step_type.name}"
                ) from exc
            raise SagaStepTimeoutError(
                f"Step {step_type.name} of saga {self.saga_id} took longer than {timeout}s"
            ) from exc

    async def _retry(
        self,
        policy: RetryPolicy,
        step_name: str,
        what: str,
        func: typing.Callable[..., typing.Awaitable[T]],
        *args: typing.Any,
    ) -> T:
        """``await func(*args)`` in the saga's correlation scope, retried as ``policy`` says."""
        attempt = 1
        while True:
            try:
                with correlation_scope(self):
                    return await func(*args)
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                if attempt >= policy.attempts or not policy.should_retry(error):
                    raise
                delay = policy.delay_before(attempt)
                logger.warning(
                    "Saga %s: %s of step %s failed (attempt %d of %d: %s); retrying in %.3fs",
                    self.saga_id, what, step_name, attempt, policy.attempts, error_text(error), delay,
                )
                attempt += 1
                await self.settings.sleep(delay)

    # -- failure and compensation ------------------------------------------------------

    async def _fail(self, done: list[_Done], error: BaseException, failed_step: str) -> None:
        self.error = error_text(error)
        logger.warning("Saga %s: step %s failed: %s", self.saga_id, failed_step, self.error)
        self._emit("step_failed", failed_step, error=self.error)
        entry = StepEntry(failed_step, "act", SagaStepStatus.FAILED, self.error)
        if not done:
            await self._checkpoint(entry, status=SagaStatus.FAILED, error=self.error, release=True)
            self.status = SagaStatus.FAILED
            self._emit("failed", error=self.error)
            return
        await self._checkpoint(entry, status=SagaStatus.COMPENSATING, error=self.error)
        self.status = SagaStatus.COMPENSATING
        self._emit("compensating", error=self.error)
        await self._compensate(list(reversed(done)))

    async def _compensate(self, pending: list[_Done]) -> None:
        """Compensate ``pending`` (newest first); one checkpoint each, the last one final."""
        if not pending:
            await self._checkpoint(None, status=SagaStatus.FAILED, release=True)
            self.status = SagaStatus.FAILED
            self._emit("failed", error=self.error)
            return
        any_failed = False
        for position, item in enumerate(pending):
            self._check_still_ours()
            last = position == len(pending) - 1
            name = item.step_type.name
            try:
                instance = item.instance
                if instance is None:  # completed in an earlier run: this run has no instance of it
                    instance = await self.container.resolve(item.step_type)
                async with self._heartbeat:
                    await self._retry(
                        self.compensation_retry, name, "compensation", instance.compensate, self.context
                    )
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                any_failed = True
                logger.error("Saga %s: compensation of step %s failed: %s", self.saga_id, name, error_text(error))
                entry = StepEntry(name, "compensate", SagaStepStatus.FAILED, error_text(error))
                self._emit("compensation_failed", name, error=error_text(error))
            else:
                entry = StepEntry(name, "compensate", SagaStepStatus.COMPENSATED)
                self._emit("step_compensated", name)
            if self.lease_lost:
                raise SagaOwnershipLostError(self.saga_id)
            final = (SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED) if last else None
            await self._checkpoint(entry, status=final, release=last)
        self.status = SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED
        self._emit("failed", error=self.error)

    # -- storage --------------------------------------------------------------------

    async def _checkpoint(
        self,
        entry: StepEntry | None,
        *,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        release: bool = False,
    ) -> None:
        assert self.lease is not None
        ok = await self.storage.checkpoint(
            self.saga_id,
            self.lease,
            entry=entry,
            context=context,
            status=status,
            error=error,
            lease_seconds=self.settings.lease_seconds,
            release=release,
        )
        if not ok:
            self.lease_lost = True
            raise SagaOwnershipLostError(self.saga_id)
        self._lease_fresh_until = asyncio.get_running_loop().time() + self.settings.lease_seconds / 2

    async def renew_lease(self) -> None:
        assert self.lease is not None
        if not await self.storage.renew_lease(self.saga_id, self.lease, self.settings.lease_seconds):
            self.lease_lost = True
            raise SagaOwnershipLostError(self.saga_id)
        self._lease_fresh_until = asyncio.get_running_loop().time() + self.settings.lease_seconds / 2

    def _hold(self) -> None:
        """Mark this run as advancing its saga (this process claims it for no one else meanwhile)."""
        if self.lease_lost or not _local_runs.hold_latest(self.saga_id, self._token):
            raise SagaOwnershipLostError(self.saga_id)

    def _check_still_ours(self) -> None:
        if self.lease_lost or not _local_runs.is_latest(self.saga_id, self._token):
            raise SagaOwnershipLostError(self.saga_id)

    # -- helpers -----------------------------------------------------------------------

    def _done_steps(self) -> list[_Done]:
        if not self.history:  # a new saga
            return []
        index = self.saga_type.entry_index()
        done: list[_Done] = []
        for row in self.history:
            if row.action != "act" or row.status != SagaStepStatus.COMPLETED:
                continue
            position = index.get(row.step_name)
            step_type = self.saga_type.step_by_name(row.step_name)
            if position is None or step_type is None:
                raise UnknownSagaError(
                    f"Saga {self.saga_id} ({self.saga_type.name}) has a completed step "
                    f"{row.step_name!r} that the current definition does not have"
                )
            done.append(_Done(position, step_type, None, row.response))
        return done

    def _compensated(self) -> set[str]:
        return {
            row.step_name
            for row in self.history
            if row.action == "compensate" and row.status == SagaStepStatus.COMPENSATED
        }

    def _replayed_result(self, item: _Done) -> Result:
        response_type = item.step_type.response_type or Response
        response = _serialization.load_response(response_type, item.response or {})
        return SagaStepResult(
            response=response, step_type=item.step_type, saga_id=self.saga_id, replayed=True
        )

    def _deadline_remaining(self) -> float | None:
        deadline = self.saga_type.deadline
        if deadline is None or self.created_at is None:
            return None
        elapsed = (datetime.datetime.now(datetime.timezone.utc) - self.created_at).total_seconds()
        return deadline - elapsed

    def _check_deadline(self) -> None:
        remaining = self._deadline_remaining()
        if remaining is not None and remaining <= 0:
            raise SagaDeadlineExceededError(
                f"Saga {self.saga_id} passed its deadline of {self.saga_type.deadline}s"
            )

    def _emit(
        self,
        kind: str,
        step_name: str | None = None,
        *,
        response: Response | None = None,
        error: str | None = None,
    ) -> None:
        if self.listener is not None:
            self.listener(
                SagaEvent(kind, self.saga_id, step_name, response, error, status=self.status)
            )


class correlation_scope:
    """Sets the saga's correlation id and saga id for step code and log records."""

    __slots__ = ("_correlation_token", "_run", "_saga_token")

    def __init__(self, run: SagaRun) -> None:
        self._run = run

    def __enter__(self) -> None:
        run = self._run
        wanted = run.correlation_id
        # Only set what differs: each set and reset costs, and this runs around every action.
        self._correlation_token = (
            correlation._correlation_id.set(wanted)
            if wanted is not None and wanted != correlation._correlation_id.get()
            else None
        )
        self._saga_token = correlation._saga_id.set(run.saga_id)

    def __exit__(self, *exc: object) -> None:
        correlation._saga_id.reset(self._saga_token)
        if self._correlation_token is not None:
            correlation._correlation_id.reset(self._correlation_token)


def _entry_name(entry: SagaEntry) -> str:
    return entry.step.name if isinstance(entry, Fallback) else entry.name


def _fallback_note(entry: SagaEntry, step_type: StepType) -> str | None:
    if step_type is not entry and isinstance(entry, Fallback) and step_type is entry.fallback:
        return f"fallback for {entry.step.name}"
    return None
