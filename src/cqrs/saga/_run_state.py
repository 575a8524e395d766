"""A saga run's data and its writes: the lease it holds, its checkpoints, this process's run guard.

`SagaRun` (`cqrs.saga._run`) is built on this, with its actions
(`cqrs.saga._run_actions`) and its compensation (`cqrs.saga._run_compensation`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import typing
import uuid
import weakref

from cqrs import correlation
from cqrs.container import Container
from cqrs.events.event import INotificationEvent
from cqrs.outbox.messages import outbox_message
from cqrs.outbox.models import OutboxMessage
from cqrs.saga._hookset import HookSet
from cqrs.saga._ownership import Heartbeat, local_runs, process_owner
from cqrs.saga.exceptions import (
    SagaOwnershipLostError,
)
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga, StepType
from cqrs.saga.settings import EngineSettings
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import Lease, SagaLogEntry, StepEntry
from cqrs.saga.storage.protocol import SagaEngineStorage

__all__ = ["RunState", "correlation_scope"]

logger = logging.getLogger("cqrs.saga")

JsonDict = dict[str, typing.Any]
Step = SagaStepHandler[typing.Any, typing.Any]
Result = SagaStepResult[typing.Any, typing.Any]
ContextBuilder = typing.Callable[[JsonDict], typing.Any]


@dataclasses.dataclass(slots=True)
class _Done:
    """A step completed in this run or an earlier one."""

    index: int
    step_type: StepType
    instance: Step | None
    response: JsonDict | None


class RunState:
    """What a run knows and how it writes: every checkpoint is conditional on its lease."""

    __slots__ = (
        "__weakref__",  # its heartbeat and correlation scope refer to it weakly (no cycle to collect)
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

    def _granted(self, lease: Lease) -> None:
        self.lease = lease
        loop = self._loop = asyncio.get_running_loop()
        self._lease_fresh_until = loop.time() + self.settings.lease_seconds / 2

    async def _checkpoint(
        self,
        entry: StepEntry | None,
        *,
        context: JsonDict | None = None,
        status: SagaStatus | None = None,
        error: str | None = None,
        release: bool = False,
        outbox: typing.Sequence[OutboxMessage] = (),
        entries: typing.Sequence[StepEntry] = (),
    ) -> None:
        assert self.lease is not None
        if entries:  # several log rows in one commit (compensations recorded together)
            ok = await self.storage.checkpoint(
                self.saga_id, self.lease, entry=entry, context=context, status=status, error=error,
                lease_seconds=self.settings.lease_seconds, release=release, outbox=outbox, entries=entries,
            )
        elif outbox:
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

    def _messages(self, events: typing.Iterable[object]) -> list[OutboxMessage]:
        """The outbox messages of ``events``' notification events (other events are not sent anywhere)."""
        return [
            outbox_message(
                e, saga_id=self.saga_id, correlation_id=self.correlation_id, trace_context=self.trace_context
            )
            for e in events
            if isinstance(e, INotificationEvent)
        ]


class correlation_scope:
    """Sets the saga's correlation id and saga id for step code and log records (refers to its run weakly, as
    `Heartbeat` does)."""

    __slots__ = ("_correlation_token", "_run", "_saga_token")

    def __init__(self, run: RunState) -> None:
        self._run = weakref.ref(run)

    def __enter__(self) -> None:
        run = self._run()
        assert run is not None, "a correlation scope is used by its run only"
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


