"""A run's failure and compensation: the record that compensation began, then the completed steps
compensated newest first, recorded together in one commit or one commit each (`EngineSettings`)."""

from __future__ import annotations

import asyncio
import logging
import typing

from cqrs.saga._hookset import call_hooks
from cqrs.saga._run_actions import RunActions
from cqrs.saga._run_state import _Done
from cqrs.saga.exceptions import (
    SagaOwnershipLostError,
)
from cqrs.saga.hooks import error_text
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import StepEntry

if typing.TYPE_CHECKING:
    from cqrs.outbox.models import OutboxMessage

__all__ = ["RunCompensation"]

logger = logging.getLogger("cqrs.saga")


class RunCompensation(RunActions):
    """Fails and compensates a run (see the module doc)."""

    __slots__ = ()

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
        """Compensate ``pending`` (newest first), recorded together in one final commit, or one commit each
        (`EngineSettings.compensation_commits`)."""
        hooks = self.hooks
        if not pending:
            await self._checkpoint(None, status=SagaStatus.FAILED, release=True)
            self.status = SagaStatus.FAILED
            if hooks.saga_finished:
                hooked = call_hooks(hooks.saga_finished, self, SagaStatus.FAILED, self.error)
                if hooked is not None:
                    await hooked
            return
        if len(pending) > 1 and self.settings.compensation_commits == "together":
            any_failed = await self._compensate_together(pending)
        else:
            any_failed = await self._compensate_each(pending)
        self.status = SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED
        if hooks.saga_finished:
            hooked = call_hooks(hooks.saga_finished, self, self.status, self.error)
            if hooked is not None:
                await hooked

    async def _compensate_each(self, pending: list[_Done]) -> bool:
        """One checkpoint per compensation, the last one final; whether any failed."""
        any_failed = False
        for position, item in enumerate(pending):
            compensated = await self._run_compensation(item)
            any_failed = any_failed or compensated.failure is not None
            last = position == len(pending) - 1
            final = (SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED) if last else None
            await self._checkpoint(compensated.entry, status=final, release=last, outbox=self._outbox_of(compensated))
            await self._after_compensation(compensated)
        return any_failed

    async def _compensate_together(self, pending: list[_Done]) -> bool:
        """Every compensation, then one checkpoint with all their entries and the final status; whether any
        failed. The hooks (and so the events) follow that commit, in the order the compensations ran."""
        done = [await self._run_compensation(item) for item in pending]
        any_failed = any(compensated.failure is not None for compensated in done)
        outbox = [message for compensated in done for message in self._outbox_of(compensated)]
        await self._checkpoint(
            None,
            entries=[compensated.entry for compensated in done],
            status=SagaStatus.COMPENSATION_FAILED if any_failed else SagaStatus.FAILED,
            release=True,
            outbox=outbox,
        )
        for compensated in done:
            await self._after_compensation(compensated)
        return any_failed

    async def _run_compensation(self, item: _Done) -> _Compensated:
        """Run one step's compensation (with its retries); what to record, the events, the failure if any."""
        self._check_still_ours()
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
            failure = error
            logger.error("Saga %s: compensation of step %s failed: %s", self.saga_id, name, error_text(error))
            entry = StepEntry(name, "compensate", SagaStepStatus.FAILED, error_text(error))
        else:
            entry = StepEntry(name, "compensate", SagaStepStatus.COMPENSATED)
        if self.lease_lost:
            raise SagaOwnershipLostError(self.saga_id)
        return _Compensated(name, entry, events, failure)

    def _outbox_of(self, compensated: _Compensated) -> list[OutboxMessage]:
        return self._messages(compensated.events) if self.outbox and compensated.events else []

    async def _after_compensation(self, compensated: _Compensated) -> None:
        """The hooks of a recorded compensation: ``step_compensated`` (in the saga's scope) or
        ``compensation_failed``."""
        hooks = self.hooks
        if compensated.failure is None:
            if hooks.step_compensated:
                with self._scope:
                    hooked = call_hooks(hooks.step_compensated, self, compensated.name, compensated.events)
                    if hooked is not None:
                        await hooked
        elif hooks.compensation_failed:
            hooked = call_hooks(hooks.compensation_failed, self, compensated.name, compensated.failure)
            if hooked is not None:
                await hooked


class _Compensated(typing.NamedTuple):
    name: str
    entry: StepEntry
    events: list[object]
    failure: BaseException | None
