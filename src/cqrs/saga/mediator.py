"""The mediator: looks up the saga for a context and runs it."""

from __future__ import annotations

import dataclasses
import typing
import uuid

from cqrs import correlation
from cqrs.container import Container
from cqrs.saga._engine import EngineSettings, Listener, SagaRun
from cqrs.saga.exceptions import SagaCompensatedError, SagaNotFoundError, UnknownSagaError
from cqrs.saga.map import SagaMap
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.step import SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.events import EventDispatcher

__all__ = ["SagaMediator", "SagaOutcome"]

Result = SagaStepResult[typing.Any, typing.Any]


@dataclasses.dataclass(slots=True)
class SagaOutcome:
    """How a saga run ended: its id, final status, step results and the step error if it failed."""

    saga_id: uuid.UUID
    status: SagaStatus
    results: list[Result]
    error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == SagaStatus.COMPLETED


class SagaMediator:
    """Runs sagas: `stream` yields each completed step; `run` waits for the end.

    Build one with `cqrs.saga.bootstrap.bootstrap`. Mediators are cheap and
    share nothing but the storage, container and settings they are given.
    """

    def __init__(
        self,
        saga_map: SagaMap,
        container: Container,
        storage: SagaStorage,
        *,
        settings: EngineSettings | None = None,
        dispatcher: EventDispatcher | None = None,
    ) -> None:
        self.saga_map = saga_map
        self.container = container
        self.storage = storage
        self.settings = settings or EngineSettings()
        self.dispatcher = dispatcher

    def _run_for(
        self,
        context_type: type[typing.Any],
        saga_id: uuid.UUID | None,
        correlation_id: str | None,
        listener: Listener | None,
        compensation_retry: RetryPolicy | None,
    ) -> SagaRun:
        return SagaRun(
            self.saga_map.get(context_type),
            saga_id or uuid.uuid4(),
            storage=self.storage,
            container=self.container,
            settings=self.settings,
            dispatcher=self.dispatcher,
            listener=listener,
            correlation_id=correlation_id or correlation.get_correlation_id(),
            compensation_retry=compensation_retry,
            context_builder=context_type,
        )

    def stream(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
        listener: Listener | None = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> typing.AsyncIterator[Result]:
        """Run the saga bound to ``type(context)``, yielding each step's result.

        With a ``saga_id`` that is already stored, the stored saga is taken up
        instead: results of its completed steps are yielded first (marked
        ``replayed``) and the run continues from the next step with the stored
        context, not ``context``. A completed saga runs nothing again.

        Breaking out of the loop pauses the saga (it stays ``running``). If a
        step fails, completed steps are compensated newest first and the step's
        own exception is raised. Raises `SagaNotBoundError` for a context type
        no saga is bound to, and `ContextSerializationError` (before any step
        runs) for a context that cannot be stored.
        """
        run = self._run_for(type(context), saga_id, correlation_id, listener, compensation_retry)
        return _stream(run, context)

    def execute(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
        listener: Listener | None = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> typing.AsyncIterator[Result]:
        """The same as `stream` (its newer name)."""
        return self.stream(
            context,
            saga_id,
            correlation_id=correlation_id,
            listener=listener,
            compensation_retry=compensation_retry,
        )

    async def run(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
        listener: Listener | None = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> SagaOutcome:
        """Run the saga to its end and report how it ended.

        A failing step does not raise here: the outcome carries the status
        (``failed`` or ``compensation_failed``) and the error. Errors that are
        not the saga's (storage down, lease lost, cancellation) do raise.
        """
        run = self._run_for(type(context), saga_id, correlation_id, listener, compensation_retry)
        await run.open_new(context)
        return await drive(run)

    async def start(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
    ) -> uuid.UUID:
        """Record a new saga without running a step; `resume` (or recovery) runs it.

        The saga is stored before this returns, with this process's lease, so
        if the process dies first a recovery worker finishes it.
        """
        run = self._run_for(type(context), saga_id, correlation_id, None, None)
        await run.open_new(context)
        return run.saga_id

    async def resume(
        self,
        saga_id: uuid.UUID,
        saga_type: type[typing.Any] | None = None,
        *,
        listener: Listener | None = None,
    ) -> SagaOutcome:
        """Advance a stored saga as far as it goes (its type is found by its stored name)."""
        if saga_type is None:
            record = await self.storage.get_saga(saga_id)
            if record is None:
                raise SagaNotFoundError(saga_id)
            found = self.saga_map.by_name(record.name)
            if found is None:
                raise UnknownSagaError(f"Saga {saga_id} is a {record.name!r}, which is not in the SagaMap")
            saga_type = found
        run = SagaRun(
            saga_type,
            saga_id,
            storage=self.storage,
            container=self.container,
            settings=self.settings,
            dispatcher=self.dispatcher,
            listener=listener,
        )
        await run.open_existing()
        return await drive(run)


async def _stream(run: SagaRun, context: typing.Any) -> typing.AsyncIterator[Result]:
    await run.open_new(context)
    async for result in run.advance():
        yield result


async def drive(run: SagaRun) -> SagaOutcome:
    """Advance an opened run to its end and report the outcome."""
    results: list[Result] = []
    try:
        async for result in run.advance():
            results.append(result)
    except SagaCompensatedError as error:
        return SagaOutcome(run.saga_id, run.status, results, error)
    except Exception as error:
        if run.status in (SagaStatus.FAILED, SagaStatus.COMPENSATION_FAILED):
            return SagaOutcome(run.saga_id, run.status, results, error)
        raise
    return SagaOutcome(run.saga_id, run.status, results)
