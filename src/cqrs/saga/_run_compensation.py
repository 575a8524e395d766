"""A run's failure and compensation: the record that compensation began, then the completed steps
compensated newest first."""

from __future__ import annotations

import asyncio
import logging

from cqrs.saga._hookset import call_hooks
from cqrs.saga._run_actions import RunActions
from cqrs.saga._run_state import _Done
from cqrs.saga.exceptions import (
    SagaOwnershipLostError,
)
from cqrs.saga.hooks import error_text
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import StepEntry

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
                    with self._scope:
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
