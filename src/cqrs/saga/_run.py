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

The run is built up in layers, one concept each: its data and writes
(`cqrs.saga._run_state`), its actions (`cqrs.saga._run_actions`), its
compensation (`cqrs.saga._run_compensation`), and here the opening and the
state machine itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import typing

from cqrs.container.scope import RunScope
from cqrs.response import Response
from cqrs.saga import _serialization
from cqrs.saga._hookset import call_hooks
from cqrs.saga._ownership import local_runs
from cqrs.saga._run_compensation import RunCompensation
from cqrs.saga._run_state import _Done
from cqrs.saga.exceptions import (
    ContextDeserializationError,
    SagaAlreadyRunningError,
    SagaCompensatedError,
    SagaIdConflictError,
    SagaNotFoundError,
    SagaNotRunnableError,
    SagaOwnershipLostError,
    UnknownSagaError,
)
from cqrs.saga.fallback import Fallback
from cqrs.saga.saga import SagaEntry, StepType
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, SagaLogEntry, SagaRecord, StepEntry

__all__ = ["SagaRun"]

logger = logging.getLogger("cqrs.saga")

T = typing.TypeVar("T")
JsonDict = dict[str, typing.Any]
Step = SagaStepHandler[typing.Any, typing.Any]
Result = SagaStepResult[typing.Any, typing.Any]
_UTC = datetime.timezone.utc
#: `SagaRun.advance`'s "no new saga to open" (a context may be None).
_NOT_NEW: typing.Any = object()


class SagaRun(RunCompensation):
    """One attempt to advance one saga, from wherever it stands, as far as it goes.

    Build runs with the mediator's factory, never directly.
    """

    __slots__ = ()

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
            with self._scope:  # event handlers and hooks see the saga's correlation id and saga id
                hooked = call_hooks(hooks.step_completed, self, step_type.name, result, instance.events)
                if hooked is not None:
                    await hooked
        if last and hooks.saga_finished:
            hooked = call_hooks(hooks.saga_finished, self, SagaStatus.COMPLETED, None)
            if hooked is not None:
                await hooked
        return result

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
        response = _serialization.load_response(response_type, item.response)
        return SagaStepResult(response=response, step_type=item.step_type, saga_id=self.saga_id, replayed=True)





def _entry_name(entry: SagaEntry) -> str:
    return entry.step.name if isinstance(entry, Fallback) else entry.name


def _fallback_note(entry: SagaEntry, step_type: StepType) -> str | None:
    if step_type is not entry and isinstance(entry, Fallback) and step_type is entry.fallback:
        return f"fallback for {entry.step.name}"
    return None
