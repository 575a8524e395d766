"""The saga state machine: the one path every run takes.

Runs are built only by `SagaMediator` (its run factory), whichever way they
start: streams, background runs, recovery, triggers and the integrations. A
run owns its saga through a storage lease (`cqrs.saga._ownership`); every
write after the start is a checkpoint conditional on that lease, so a runner
that lost the saga to another one stops without writing. Hooks
(`cqrs.saga.hooks`) observe each transition.

Checkpoints per saga: one to start, one per completed step (the last one also
stores the final status), and on failure one to enter compensation plus one
per compensated step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import typing
import uuid

from cqrs import correlation
from cqrs.adapters.circuit_breaker import CircuitOpenError
from cqrs.container import Container
from cqrs.container.scope import RunScope
from cqrs.events.event import INotificationEvent
from cqrs.outbox.messages import outbox_message
from cqrs.outbox.models import OutboxMessage
from cqrs.response import Response
from cqrs.saga import _serialization
from cqrs.saga._hookset import HookSet, call_hooks
from cqrs.saga._ownership import Heartbeat, local_runs, process_owner
from cqrs.saga.exceptions import (
    ContextDeserializationError,
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
from cqrs.saga.hooks import Action, error_text
from cqrs.saga.retry import NO_RETRY, RetryPolicy
from cqrs.saga.saga import Saga, SagaEntry, StepType
from cqrs.saga.settings import EngineSettings
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, SagaLogEntry, SagaRecord, StepEntry
from cqrs.saga.storage.protocol import SagaEngineStorage

__all__ = ["SagaRun", "correlation_scope"]

logger = logging.getLogger("cqrs.saga")

T = typing.TypeVar("T")
JsonDict = dict[str, typing.Any]
Step = SagaStepHandler[typing.Any, typing.Any]
Result = SagaStepResult[typing.Any, typing.Any]
ContextBuilder = typing.Callable[[JsonDict], typing.Any]

_UTC = datetime.timezone.utc
#: `SagaRun.advance`'s "no new saga to open" (a context may be None).
_NOT_NEW: typing.Any = object()


@dataclasses.dataclass(slots=True)
class _Done:
    """A step completed in this run or an earlier one."""

    index: int
    step_type: StepType
    instance: Step | None
    response: JsonDict | None


class SagaRun:
    """One attempt to advance one saga, from wherever it stands, as far as it goes.

    Build runs with the mediator's factory, never directly.
    """

    __slots__ = (
        "_busy",
        "_current_step",
        "_done",
        "_factories",
        "_heartbeat",
        "_lease_fresh_until",
        "_loop",
        "_observed",
        "_scope",
        "_token",
        "compensation_retry",
        "container",
        "context",
        "context_builder",
        "correlation_id",
        "created_at",
        "error",
        "history",
        "hooks",
        "lease",
        "lease_lost",
        "outbox",
        "owner",
        "recovering",
        "saga_id",
        "saga_type",
        "settings",
        "status",
        "storage",
        "trace_context",
    )

    def __init__(
        self,
        saga_type: type[Saga[typing.Any]],
        saga_id: uuid.UUID,
        *,
        storage: SagaEngineStorage,
        container: Container[typing.Any],
        settings: EngineSettings,
        hooks: HookSet,
        correlation_id: str | None = None,
        compensation_retry: RetryPolicy | None = None,
        context_builder: ContextBuilder | None = None,
        outbox: bool = False,
    ) -> None:
        self.saga_type = saga_type
        self.outbox = outbox
        self.saga_id = saga_id
        self.storage = storage
        self.container = container
        self.settings = settings
        self.hooks = hooks
        self.correlation_id = correlation_id
        self.compensation_retry = compensation_retry or saga_type.compensation_retry or settings.compensation_retry
        self.context_builder = context_builder
        self.owner = process_owner()
        self.context: typing.Any = None
        self.lease: Lease | None = None
        self.status: SagaStatus = SagaStatus.RUNNING
        self.error: str | None = None
        self.history: list[SagaLogEntry] = []
        self.created_at: datetime.datetime | None = None
        self.trace_context: dict[str, str] | None = None
        self.recovering = False
        self.lease_lost = False
        self._busy = False
        self._lease_fresh_until = 0.0
        self._token = object()
        self._current_step: str | None = None
        self._done: list[_Done] = []
        self._heartbeat = Heartbeat(self)
        self._scope = correlation_scope(self)  # reused: a run does one action at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observed = bool(hooks.attempt_started or hooks.attempt_finished)
        # Step classes the container builds with a plain call (no await), when it says which.
        self._factories: typing.Mapping[type[typing.Any], typing.Callable[[], typing.Any]] | None = getattr(
            container, "plain_factories", None
        )

    @property
    def saga_name(self) -> str:
        return self.saga_type.name

    @property
    def lease_seconds(self) -> float:
        return self.settings.lease_seconds

    # -- opening -----------------------------------------------------------------

    def new_saga(
        self, context_json: JsonDict, status: SagaStatus = SagaStatus.RUNNING, events: typing.Sequence[object] = ()
    ) -> NewSaga:
        """The row that records this saga's start (every start path inserts one of these).

        ``events``: notification events the start carries, written to the outbox in the same commit
        (the mediator must have the outbox on).
        """
        if self.hooks.saga_starting:
            for starting in self.hooks.saga_starting:
                fields = starting(self)
                if fields:
                    self.trace_context = {**(self.trace_context or {}), **fields}
        return NewSaga(
            saga_id=self.saga_id,
            name=self.saga_type.name,
            context=context_json,
            definition_version=self.saga_type.version,
            correlation_id=self.correlation_id,
            status=status,
            trace_context=self.trace_context,
            outbox=self._messages(events) if events else (),
        )

    async def record(
        self, context: typing.Any, status: SagaStatus = SagaStatus.RUNNING, events: typing.Sequence[object] = ()
    ) -> bool:
        """Insert this saga with this process's lease, in one commit; False if its id is taken.

        Nothing else is claimed: a taken id means another run has (or had) the saga.
        """
        lease = await self.storage.start_saga(
            self.new_saga(_serialization.dump_context(context), status, events),
            self.owner,
            self.settings.lease_seconds,
        )
        if lease is None:
            return False
        await self._started(lease, context, status)
        return True

    async def open_new(self, context: typing.Any, events: typing.Sequence[object] = ()) -> None:
        """Record a new saga, or take up the stored one if this id exists."""
        new = self.new_saga(_serialization.dump_context(context), events=events)
        # Reserved across the insert: if the id is taken, this run claims it next, which must not
        # fence a run of this process that is mid-step.
        local_runs.reserve(self.saga_id, self._token)
        try:
            lease = await self.storage.start_saga(new, self.owner, self.settings.lease_seconds)
        finally:
            local_runs.pause(self.saga_id, self._token)
        if lease is None:
            await self.open_existing()
        else:
            await self._started(lease, context, SagaStatus.RUNNING)

    async def _started(self, lease: Lease, context: typing.Any, status: SagaStatus) -> None:
        self._granted(lease)
        self.context = context
        self.status = status
        if self.saga_type.deadline is not None:  # the deadline counts from here (read only for it)
            self.created_at = datetime.datetime.now(_UTC)
        if self.hooks.saga_started:
            hooked = call_hooks(self.hooks.saga_started, self)
            if hooked is not None:
                await hooked

    async def open_existing(self, *, as_named: bool = False) -> None:
        """Claim a stored saga so it can be advanced (or replayed, if final).

        ``as_named``: the caller says which saga this is (`recover_saga`), so a
        stored name that differs is taken as this saga's, with a warning.
        """
        # Reserved across the claim: a claim by this process's owner would fence a run of this
        # process that is mid-step (its step would then run again), so it is refused instead.
        local_runs.reserve(self.saga_id, self._token)
        try:
            claim = await self.storage.claim_saga(self.saga_id, self.owner, self.settings.lease_seconds)
        finally:
            local_runs.pause(self.saga_id, self._token)
        if claim is None:
            raise SagaNotFoundError(self.saga_id)
        self._busy = claim.busy
        if as_named and claim.record.name != self.saga_type.name:
            logger.warning(
                "Saga %s is stored as %r; running it as %s, as the caller said",
                self.saga_id, claim.record.name, self.saga_type.__qualname__,
            )
            claim = dataclasses.replace(claim, record=dataclasses.replace(claim.record, name=self.saga_type.name))
        await self.adopt(claim.record, claim.history, claim.lease)

    async def adopt(self, record: SagaRecord, history: list[SagaLogEntry], lease: Lease | None) -> None:
        """Take up a stored saga whose lease (if any) the caller already holds."""
        if record.name != self.saga_type.name:
            raise SagaIdConflictError(
                f"Saga id {self.saga_id} belongs to saga {record.name!r}, not {self.saga_type.name!r}"
            )
        self.recovering = True
        self.status = record.status
        self.error = record.error
        self.history = history
        self.created_at = record.created_at
        self.trace_context = record.trace_context
        if record.correlation_id is not None:  # the saga keeps the id it started under, whoever takes it up
            self.correlation_id = record.correlation_id
        if lease is not None:
            self._granted(lease)
        self.context = self._load_context(record.context)
        if lease is not None and self.hooks.saga_resumed:
            hooked = call_hooks(self.hooks.saga_resumed, self)
            if hooked is not None:
                await hooked

    def _load_context(self, data: JsonDict) -> typing.Any:
        builder = self.context_builder
        if builder is not None and not (isinstance(builder, type) and _serialization.is_context_type(builder)):
            return builder(data)
        context_type = builder if isinstance(builder, type) else self.saga_type.context_type
        if context_type is None:
            raise UnknownSagaError(
                f"Saga {self.saga_type.__qualname__} declares no context type; subclass Saga[YourContext]"
            )
        reader = getattr(context_type, "from_dict", None)
        if not callable(reader):
            return _serialization.load_context(context_type, data, saga_id=self.saga_id)
        # The context class's own reader: python-cqrs's recover_saga calls it, and `SagaContext.from_dict`
        # also reads the camelCase rows python-cqrs stored.
        try:
            return reader(data)
        except ContextDeserializationError:
            raise
        except Exception as error:
            raise ContextDeserializationError(
                f"Saga {self.saga_id}: the stored context no longer fits {context_type.__qualname__}: {error}",
                saga_id=self.saga_id, fields=(),
            ) from error

    def _granted(self, lease: Lease) -> None:
        self.lease = lease
        loop = self._loop = asyncio.get_running_loop()
        self._lease_fresh_until = loop.time() + self.settings.lease_seconds / 2

    # -- the state machine ------------------------------------------------------------

    async def advance(self, context: typing.Any = _NOT_NEW) -> typing.AsyncIterator[Result]:
        """Yield stored results first (``replayed=True``), then each newly completed step.

        With ``context``, the saga is opened first (`open_new`): a stream is
        then one generator, not two. Raises the failing step's own error once
        its saga is compensated.
        """
        if context is not _NOT_NEW:
            await self.open_new(context)
        if self.lease is None:
            async for result in self._finished():
                yield result
            return
        local_runs.claim(self.saga_id, self._token)
        try:
            done = self._done = self._done_steps()
            for item in done:
                yield self._replayed_result(item)
            if self.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
                resumed_from = self.status.value
                self._hold()
                compensated = self._compensated()
                await self._compensate([d for d in reversed(done) if d.step_type.name not in compensated])
                raise SagaCompensatedError(self.saga_id, self.status.value, self.error, resumed_from=resumed_from)
            if self.status == SagaStatus.PENDING:
                self.status = SagaStatus.RUNNING
            steps = self.saga_type.steps
            start = done[-1].index + 1 if done else 0
            loop = asyncio.get_running_loop()
            for index in range(start, len(steps)):
                self._hold()
                if loop.time() > self._lease_fresh_until:
                    await self.renew_lease()
                result = await self._forward(index, steps[index], done)
                local_runs.pause(self.saga_id, self._token)
                yield result
            if not steps[start:]:
                # Every step was recorded but the final status was not (a definition
                # that shrank, or a crash between two writes of an older version).
                self._hold()
                await self._checkpoint(None, status=SagaStatus.COMPLETED, release=True)
                self.status = SagaStatus.COMPLETED
        except SagaOwnershipLostError:
            if self.hooks.lease_lost:
                hooked = call_hooks(self.hooks.lease_lost, self)
                if hooked is not None:
                    await hooked
            raise
        finally:
            local_runs.forget(self.saga_id, self._token)
            if type(self.container) is RunScope:
                await self.container.aclose()

    async def abort(self, error: BaseException) -> None:
        """Fail the saga now, from outside a step (its caller raised): compensate what completed.

        Does nothing unless this run holds the saga and it is running. The
        failure is recorded against the next step (the one that did not run).
        """
        if self.lease is None or self.lease_lost or self.status not in (SagaStatus.RUNNING, SagaStatus.PENDING):
            return
        self._hold()
        try:
            steps = self.saga_type.steps
            following = self._done[-1].index + 1 if self._done else 0
            await self._fail(self._done, error, _entry_name(steps[min(following, len(steps) - 1)]))
        except SagaOwnershipLostError:
            if self.hooks.lease_lost:
                hooked = call_hooks(self.hooks.lease_lost, self)
                if hooked is not None:
                    await hooked
            raise
        finally:
            local_runs.forget(self.saga_id, self._token)

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
        """Run step ``index`` and record it; on failure, compensate ``done`` and raise."""
        if self.hooks.step_started:
            hooked = call_hooks(self.hooks.step_started, self, _entry_name(entry))
            if hooked is not None:
                await hooked
        try:
            if isinstance(entry, Fallback) or self.saga_type.deadline is not None:
                step_type, instance, result = await self._act_entry(entry)
            else:  # the common case, without the extra coroutine
                step_type = entry
                self._current_step = entry.name
                factory = self._factories.get(entry) if self._factories is not None else None
                instance = factory() if factory is not None else await self.container.resolve(entry)
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
        step_entry = StepEntry(
            step_type.name,
            "act",
            SagaStepStatus.COMPLETED,
            None if step_type is entry else _fallback_note(entry, step_type),
            response_json,
        )
        if self.outbox:
            await self._checkpoint(
                step_entry, context=context_json, status=SagaStatus.COMPLETED if last else None, release=last,
                outbox=self._messages(instance.events),
            )
        else:  # `_checkpoint` inlined: one coroutine less on every step
            assert self.lease is not None
            if not await self.storage.checkpoint(
                self.saga_id, self.lease, entry=step_entry, context=context_json,
                status=SagaStatus.COMPLETED if last else None, lease_seconds=self.settings.lease_seconds, release=last,
            ):
                self.lease_lost = True
                raise SagaOwnershipLostError(self.saga_id)
            if self._loop is not None:
                self._lease_fresh_until = self._loop.time() + self.settings.lease_seconds / 2
        done.append(_Done(index, step_type, instance, response_json))
        if last:
            self.status = SagaStatus.COMPLETED
        if result.saga_id is None:
            # `_generate_step_result` made it for this call; a result handed out before keeps its id.
            result.saga_id = self.saga_id
        else:
            result = dataclasses.replace(result, saga_id=self.saga_id)
        hooks = self.hooks
        if hooks.step_completed:
            hooked = call_hooks(hooks.step_completed, self, step_type.name, result, instance.events)
            if hooked is not None:
                await hooked
        if last and hooks.saga_finished:
            hooked = call_hooks(hooks.saga_finished, self, SagaStatus.COMPLETED, None)
            if hooked is not None:
                await hooked
        return result

    async def _act_entry(self, entry: SagaEntry) -> tuple[StepType, Step, Result]:
        """Run an entry's action (the deadline checked first; a `Fallback`'s stand-in if need be)."""
        if self.saga_type.deadline is not None:
            self._check_deadline()
        if isinstance(entry, Fallback):
            return await self._run_fallback(entry)
        instance = await self._resolve(entry)
        return entry, instance, await self._act(entry, instance)

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
                if self.hooks.step_failed:
                    hooked = call_hooks(self.hooks.step_failed, self, primary.name, error)
                    if hooked is not None:
                        await hooked
                _serialization.restore_in_place(self.context, snapshot)
        if self.hooks.step_started:
            hooked = call_hooks(self.hooks.step_started, self, entry.fallback.name)
            if hooked is not None:
                await hooked
        instance = await self._resolve(entry.fallback)
        return entry.fallback, instance, await self._act(entry.fallback, instance)

    def _resolve(self, step_type: StepType) -> typing.Awaitable[Step]:
        # Not a coroutine itself: one layer less on every step.
        self._current_step = step_type.name
        return self.container.resolve(step_type)

    async def _act(self, step_type: StepType, instance: Step) -> Result:
        self._current_step = step_type.name
        heartbeat = self._heartbeat
        heartbeat.begin()
        try:
            policy = step_type.retry
            if policy is None and not self._observed and step_type.timeout is None and self.saga_type.deadline is None:
                # One attempt, no time limit, nothing watching it: `_attempt` inlined.
                events = getattr(instance, "_events", None)
                events_before = len(events) if type(events) is list else -1
                with self._scope:
                    try:
                        result = await instance.act(self.context)
                    except BaseException:
                        if events_before >= 0:  # a failed attempt's events describe what did not happen
                            del typing.cast("list[object]", events)[events_before:]
                        raise
                if not isinstance(result, SagaStepResult):
                    raise StepContractError(
                        f"{step_type.__qualname__}.act returned {result!r}; "
                        "return self._generate_step_result(response)"
                    )
                return result
            return await self._retry(policy or NO_RETRY, step_type.name, "act", self._attempt, step_type, instance)
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
                f"{step_type.__qualname__}.act returned {result!r}; return self._generate_step_result(response)"
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
        what: Action,
        func: typing.Callable[..., typing.Awaitable[T]],
        *args: typing.Any,
    ) -> T:
        """``await func(*args)`` in the saga's correlation scope, retried as ``policy`` says."""
        hooks = self.hooks
        observed = bool(hooks.attempt_started or hooks.attempt_finished)
        attempt = 1
        while True:
            try:
                with self._scope:
                    if not observed:
                        return await func(*args)
                    return await self._observed_attempt(step_name, what, attempt, func, args)
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                if attempt >= policy.attempts or not policy.should_retry(error):
                    raise
                delay = policy.delay_before(attempt)
                logger.warning(
                    "Saga %s: %s of step %s failed (attempt %d of %d: %s); retrying in %.3fs",
                    self.saga_id, "compensation" if what == "compensate" else what, step_name, attempt,
                    policy.attempts, error_text(error), delay,
                )
                attempt += 1
                await self.settings.sleep(delay)

    async def _observed_attempt(
        self,
        step_name: str,
        what: Action,
        attempt: int,
        func: typing.Callable[..., typing.Awaitable[T]],
        args: tuple[typing.Any, ...],
    ) -> T:
        hooks = self.hooks
        if hooks.attempt_started:
            hooked = call_hooks(hooks.attempt_started, self, step_name, what, attempt)
            if hooked is not None:
                await hooked
        try:
            outcome = await func(*args)
        except BaseException as error:
            if hooks.attempt_finished:
                hooked = call_hooks(hooks.attempt_finished, self, step_name, what, attempt, error)
                if hooked is not None:
                    await hooked
            raise
        if hooks.attempt_finished:
            hooked = call_hooks(hooks.attempt_finished, self, step_name, what, attempt, None)
            if hooked is not None:
                await hooked
        return outcome

    # -- failure and compensation ------------------------------------------------------

    async def _fail(self, done: list[_Done], error: BaseException, failed_step: str) -> None:
        self.error = error_text(error)
        logger.warning("Saga %s: step %s failed: %s", self.saga_id, failed_step, self.error)
        hooks = self.hooks
        if hooks.step_failed:
            hooked = call_hooks(hooks.step_failed, self, failed_step, error)
            if hooked is not None:
                await hooked
        entry = StepEntry(failed_step, "act", SagaStepStatus.FAILED, self.error)
        if not done:
            await self._checkpoint(entry, status=SagaStatus.FAILED, error=self.error, release=True)
            self.status = SagaStatus.FAILED
            if hooks.saga_finished:
                hooked = call_hooks(hooks.saga_finished, self, SagaStatus.FAILED, self.error)
                if hooked is not None:
                    await hooked
            return
        await self._checkpoint(entry, status=SagaStatus.COMPENSATING, error=self.error)
        self.status = SagaStatus.COMPENSATING
        if hooks.compensation_started:
            hooked = call_hooks(hooks.compensation_started, self, self.error)
            if hooked is not None:
                await hooked
        await self._compensate(list(reversed(done)))

    async def _compensate(self, pending: list[_Done]) -> None:
        """Compensate ``pending`` (newest first); one checkpoint each, the last one final."""
        hooks = self.hooks
        if not pending:
            await self._checkpoint(None, status=SagaStatus.FAILED, release=True)
            self.status = SagaStatus.FAILED
            if hooks.saga_finished:
                hooked = call_hooks(hooks.saga_finished, self, SagaStatus.FAILED, self.error)
                if hooked is not None:
                    await hooked
            return
        any_failed = False
        for position, item in enumerate(pending):
            self._check_still_ours()
            last = position == len(pending) - 1
            name = item.step_type.name
            failure: BaseException | None = None
            events: list[object] = []
            try:
                instance = item.instance
                if instance is None:  # completed in an earlier run: this run has no instance of it
                    instance = await self.container.resolve(item.step_type)
                events_before = len(instance.events)
                async with self._heartbeat:
                    await self._retry(self.compensation_retry, name, "compensate", instance.compensate, self.context)
                events = instance.events[events_before:]
            except (asyncio.CancelledError, SagaOwnershipLostError):
                raise
            except Exception as error:
                any_failed = True
                failure = error
                logger.error("Saga %s: compensation of step %s failed: %s", self.saga_id, name, error_text(error))
                entry = StepEntry(name, "compensate", SagaStepStatus.FAILED, error_text(error))
            else:
                entry = StepEntry(name, "compensate", SagaStepStatus.COMPENSATED)
            if self.lease_lost:
                raise SagaOwnershipLostError(self.saga_id)
            final = (SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED) if last else None
            await self._checkpoint(
                entry, status=final, release=last, outbox=self._messages(events) if self.outbox and events else ()
            )
            if failure is None:
                if hooks.step_compensated:
                    hooked = call_hooks(hooks.step_compensated, self, name, events)
                    if hooked is not None:
                        await hooked
            elif hooks.compensation_failed:
                hooked = call_hooks(hooks.compensation_failed, self, name, failure)
                if hooked is not None:
                    await hooked
        self.status = SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED
        if hooks.saga_finished:
            hooked = call_hooks(hooks.saga_finished, self, self.status, self.error)
            if hooked is not None:
                await hooked

    # -- storage --------------------------------------------------------------------

    async def _checkpoint(
        self,
        entry: StepEntry | None,
        *,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        release: bool = False,
        outbox: typing.Sequence[OutboxMessage] = (),
    ) -> None:
        assert self.lease is not None
        if outbox:
            ok = await self.storage.checkpoint(
                self.saga_id, self.lease, entry=entry, context=context, status=status, error=error,
                lease_seconds=self.settings.lease_seconds, release=release, outbox=outbox,
            )
        else:  # the storage's own default: a storage without an outbox still takes this call
            ok = await self.storage.checkpoint(
                self.saga_id, self.lease, entry=entry, context=context, status=status, error=error,
                lease_seconds=self.settings.lease_seconds, release=release,
            )
        if not ok:
            self.lease_lost = True
            raise SagaOwnershipLostError(self.saga_id)
        if self._loop is not None:
            self._lease_fresh_until = self._loop.time() + self.settings.lease_seconds / 2

    async def renew_lease(self) -> None:
        assert self.lease is not None
        if not await self.storage.renew_lease(self.saga_id, self.lease, self.settings.lease_seconds):
            self.lease_lost = True
            raise SagaOwnershipLostError(self.saga_id)
        self._lease_fresh_until = asyncio.get_running_loop().time() + self.settings.lease_seconds / 2

    async def release(self) -> None:
        """Give the lease up (after an interruption), so another runner may take the saga at once."""
        if self.lease is not None and not self.lease_lost:
            await self.storage.release_lease(self.saga_id, self.lease)

    def _hold(self) -> None:
        """Mark this run as advancing its saga (this process claims it for no one else meanwhile)."""
        if self.lease_lost or not local_runs.hold_latest(self.saga_id, self._token):
            raise SagaOwnershipLostError(self.saga_id)

    def _check_still_ours(self) -> None:
        if self.lease_lost or not local_runs.is_latest(self.saga_id, self._token):
            raise SagaOwnershipLostError(self.saga_id)

    # -- helpers -----------------------------------------------------------------------

    def _messages(self, events: typing.Iterable[object]) -> list[OutboxMessage]:
        """The outbox messages of ``events``' notification events (other events are not sent anywhere)."""
        return [
            outbox_message(
                e, saga_id=self.saga_id, correlation_id=self.correlation_id, trace_context=self.trace_context
            )
            for e in events
            if isinstance(e, INotificationEvent)
        ]

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
        response = _serialization.load_response(response_type, item.response)
        return SagaStepResult(response=response, step_type=item.step_type, saga_id=self.saga_id, replayed=True)

    def _deadline_remaining(self) -> float | None:
        deadline = self.saga_type.deadline
        if deadline is None or self.created_at is None:
            return None
        return deadline - (datetime.datetime.now(_UTC) - self.created_at).total_seconds()

    def _check_deadline(self) -> None:
        remaining = self._deadline_remaining()
        if remaining is not None and remaining <= 0:
            raise SagaDeadlineExceededError(f"Saga {self.saga_id} passed its deadline of {self.saga_type.deadline}s")


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
