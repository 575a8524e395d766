"""The mediator: the one place saga runs are built, and the ways to start or take them up."""

from __future__ import annotations

import dataclasses
import typing
import uuid

from cqrs import correlation
from cqrs.container import Container, as_container
from cqrs.container.scope import RunScope, ScopeStrategy
from cqrs.saga._hookset import HookSet
from cqrs.saga._run import SagaRun
from cqrs.saga._run_state import ContextBuilder
from cqrs.saga.exceptions import SagaCompensatedError, SagaNotFoundError, UnknownSagaError
from cqrs.saga.hooks import Listener, ListenerHook
from cqrs.saga.map import SagaMap
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.step import SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import NewSaga, SagaClaim
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.telemetry import default_hooks

if typing.TYPE_CHECKING:
    from cqrs.events import EventDispatcher, EventEmitter, EventMap
    from cqrs.saga.recovery import RecoveryWorker

__all__ = ["SagaMediator", "SagaOutcome"]

Result = SagaStepResult[typing.Any, typing.Any]
SagaType = type[Saga[typing.Any]]


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

    Every run, whichever way it starts (a stream, a background run, recovery,
    a trigger, an integration), is built here by one factory, so the
    mediator's hooks, event handlers, settings and correlation ids apply to
    all of them. Build one with `cqrs.bootstrap` (or directly); mediators are
    cheap and share nothing but what they are given.

    The positional parameters are python-cqrs's, in its order, so code
    written for it builds a mediator unchanged: ``event_emitter`` (or
    ``event_map``, for handlers resolved from ``container``) receives each
    step's events once the step is recorded, up to
    ``max_concurrent_event_handlers`` at once when
    ``concurrent_event_handle_enable`` (by default on, except with
    ``ScopeStrategy.SEND``); ``storage`` defaults to a new
    `MemorySagaStorage`; the ``compensation_retry_*`` numbers make the
    default compensation `RetryPolicy`; ``scope_strategy`` says which
    container scope a run's instances live in (`ScopeStrategy`).

    Keyword-only: ``settings`` (`EngineSettings`, which then replaces the
    ``compensation_retry_*`` numbers), ``hooks`` that observe every run
    (`cqrs.saga.hooks.SagaHook`), ``outbox`` (notification events go to
    the outbox with their step's checkpoint instead of straight to the
    emitter's broker), and ``telemetry``: unless False, the hooks of
    `cqrs.telemetry.default_hooks` (lifecycle log records, and OpenTelemetry
    spans once a tracer provider is configured) come before ``hooks``.
    """

    def __init__(
        self,
        saga_map: SagaMap,
        container: typing.Any,
        event_emitter: EventEmitter | None = None,
        middleware_chain: typing.Any = None,
        event_map: EventMap | None = None,
        max_concurrent_event_handlers: int = 1,
        concurrent_event_handle_enable: bool | None = None,
        storage: SagaStorage | None = None,
        compensation_retry_count: int = DEFAULT_COMPENSATION_RETRY.attempts,
        compensation_retry_delay: float = DEFAULT_COMPENSATION_RETRY.delay,
        compensation_retry_backoff: float = DEFAULT_COMPENSATION_RETRY.backoff,
        scope_strategy: ScopeStrategy = ScopeStrategy.NONE,
        *,
        settings: EngineSettings | None = None,
        hooks: typing.Iterable[object] = (),
        outbox: bool = False,
        telemetry: bool = True,
    ) -> None:
        if storage is None:
            from cqrs.saga.storage.memory import MemorySagaStorage

            storage = MemorySagaStorage()
        if settings is None:
            settings = EngineSettings(
                compensation_retry=RetryPolicy(
                    attempts=compensation_retry_count,
                    delay=compensation_retry_delay,
                    backoff=compensation_retry_backoff,
                )
            )
        self.saga_map = saga_map
        self.container: Container[typing.Any] = as_container(container)
        self.storage = storage
        self.settings = settings
        self.scope_strategy = ScopeStrategy(scope_strategy)
        self.outbox = outbox
        #: Accepted for python-cqrs compatibility; saga runs do not pass through request middlewares.
        self.middleware_chain = middleware_chain
        if concurrent_event_handle_enable is None:
            concurrent_event_handle_enable = self.scope_strategy is not ScopeStrategy.SEND
        elif concurrent_event_handle_enable and self.scope_strategy is ScopeStrategy.SEND:
            raise ValueError(
                "ScopeStrategy.SEND shares one scope across a run's event handlers, so they cannot run "
                "concurrently: pass concurrent_event_handle_enable=False (or leave it unset)"
            )
        self.dispatcher: EventDispatcher | None = None
        if event_emitter is not None or event_map:
            from cqrs.events import EventDispatcher, EventEmitter

            self.dispatcher = EventDispatcher(
                emitter=event_emitter or EventEmitter(typing.cast("EventMap", event_map), self.container),
                max_concurrent=max_concurrent_event_handlers,
                concurrent=concurrent_event_handle_enable,
                broker_notifications=not outbox,
            )
        installed = [*default_hooks(), *hooks] if telemetry else list(hooks)
        if self.dispatcher is not None:
            installed.insert(0, self.dispatcher.hook())
        self._hooks = HookSet(installed)
        # Hooks that say, run by run, whether they are wanted (`SagaHook` doc): a HookSet per answer.
        self._switched = tuple(hook for hook in installed if callable(getattr(hook, "active", None)))
        self._by_answer: dict[tuple[bool, ...], HookSet] = {}

    def _run_hooks(self) -> HookSet:
        """The hooks of a run built now (without those whose ``active()`` says no)."""
        if not self._switched:
            return self._hooks
        answer = tuple(bool(hook.active()) for hook in self._switched)  # type: ignore[attr-defined]
        found = self._by_answer.get(answer)
        if found is None:
            off = {id(hook) for hook, on in zip(self._switched, answer, strict=True) if not on}
            found = self._by_answer[answer] = HookSet(h for h in self._hooks.hooks if id(h) not in off)
        return found

    @property
    def hook_set(self) -> HookSet:
        """The installed hooks, sorted by hook point (what runs and recovery workers call)."""
        return self._hooks

    @property
    def hooks(self) -> tuple[object, ...]:
        """The hooks every run of this mediator calls (the event dispatcher's first, if any)."""
        return self._hooks.hooks

    # -- the run factory ------------------------------------------------------------------

    def build_run(
        self,
        saga_type: SagaType,
        saga_id: uuid.UUID,
        *,
        correlation_id: str | None = None,
        listener: Listener | None = None,
        compensation_retry: RetryPolicy | None = None,
        context_builder: ContextBuilder | None = None,
    ) -> SagaRun:
        """Build a run: the only place one is made (start it with ``open_new``, ``open_existing`` or ``adopt``)."""
        container: typing.Any = self.container
        if self.scope_strategy is not ScopeStrategy.NONE:
            container = RunScope(container, self.scope_strategy)
        return SagaRun(
            saga_type,
            saga_id,
            storage=self.storage,
            container=container,
            settings=self.settings,
            hooks=self._run_hooks() if listener is None else self._run_hooks().plus(ListenerHook(listener)),
            correlation_id=correlation_id,
            compensation_retry=compensation_retry,
            context_builder=context_builder,
            outbox=self.outbox,
        )

    def _for_context(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None,
        correlation_id: str | None,
        listener: Listener | None,
        compensation_retry: RetryPolicy | None,
    ) -> SagaRun:
        context_type = type(context)
        return self.build_run(
            self.saga_map.saga_for(context_type),
            saga_id or uuid.uuid4(),
            correlation_id=correlation_id or correlation.get_correlation_id(),
            listener=listener,
            compensation_retry=compensation_retry,
            context_builder=context_type,
        )

    def saga_type_of(self, name: str) -> SagaType:
        """The saga class registered under ``name``; `UnknownSagaError` if none is."""
        found = self.saga_map.by_name(name)
        if found is None:
            raise UnknownSagaError(f"No saga named {name!r} is in the SagaMap")
        return found

    # -- starting ---------------------------------------------------------------------------

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
        run = self._for_context(context, saga_id, correlation_id, listener, compensation_retry)
        return run.advance(context)

    def execute(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
        listener: Listener | None = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> typing.AsyncIterator[Result]:
        """The same as `stream` (python-cqrs 5's name)."""
        return self.stream(
            context, saga_id, correlation_id=correlation_id, listener=listener, compensation_retry=compensation_retry
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
        run = self._for_context(context, saga_id, correlation_id, listener, compensation_retry)
        await run.open_new(context)
        return await drive(run)

    async def start(
        self,
        context: typing.Any,
        saga_id: uuid.UUID | None = None,
        *,
        correlation_id: str | None = None,
        events: typing.Sequence[object] = (),
    ) -> uuid.UUID:
        """Record a new saga without running a step; `resume` (or recovery) runs it.

        The saga is stored before this returns, with this process's lease, so
        if the process dies first a recovery worker finishes it. ``events``:
        notification events written to the outbox in the same commit (needs
        the outbox on).
        """
        run = self._for_context(context, saga_id, correlation_id, None, None)
        await run.open_new(context, self._start_events(events))
        return run.saga_id

    def _start_events(self, events: typing.Sequence[object]) -> typing.Sequence[object]:
        if events and not self.outbox:
            raise ValueError(
                "Events a saga's start carries go to the outbox with its first commit: "
                "build the mediator with outbox=True"
            )
        return events

    async def record(
        self,
        saga_type: SagaType,
        context: typing.Any,
        saga_id: uuid.UUID,
        *,
        status: SagaStatus = SagaStatus.PENDING,
        correlation_id: str | None = None,
        events: typing.Sequence[object] = (),
    ) -> bool:
        """Insert a saga with this process's lease if ``saga_id`` is free; True if it was inserted.

        Nothing runs; `resume` (or recovery, once the lease lapses) runs it.
        Triggers record the sagas an event starts this way. ``events`` as for `start`.
        """
        run = self.build_run(saga_type, saga_id, correlation_id=correlation_id or correlation.get_correlation_id())
        return await run.record(context, status, self._start_events(events))

    def new_saga(
        self,
        saga_type: SagaType,
        context_json: dict[str, typing.Any],
        saga_id: uuid.UUID,
        *,
        status: SagaStatus = SagaStatus.PENDING,
        correlation_id: str | None = None,
        events: typing.Sequence[object] = (),
    ) -> NewSaga:
        """The start row of a saga (with its outbox messages), for a caller that inserts it in a
        transaction of its own (Django's atomic start)."""
        run = self.build_run(saga_type, saga_id, correlation_id=correlation_id or correlation.get_correlation_id())
        return run.new_saga(context_json, status, self._start_events(events))

    # -- taking up stored sagas ----------------------------------------------------------------

    async def resume(
        self,
        saga_id: uuid.UUID,
        saga_type: SagaType | None = None,
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
        run = self.build_run(saga_type, saga_id, listener=listener)
        await run.open_existing()
        return await drive(run)

    async def recover(
        self,
        saga_type: SagaType,
        saga_id: uuid.UUID,
        *,
        context_builder: ContextBuilder | None = None,
        compensation_retry: RetryPolicy | None = None,
        listener: Listener | None = None,
    ) -> SagaRun:
        """Finish one interrupted saga from where its storage says it stands (see `recover_saga`).

        Returns the run, whose ``status`` tells how it ended; raises what
        `recover_saga` documents.
        """
        run = self.build_run(
            saga_type, saga_id, listener=listener, compensation_retry=compensation_retry,
            context_builder=context_builder,
        )
        await run.open_existing(as_named=True)
        async for _ in run.advance():
            pass
        return run

    async def take_over(self, claim: SagaClaim) -> SagaRun:
        """A run of a saga this process already claimed (a recovery worker's claim), adopted."""
        saga_type = self.saga_type_of(claim.record.name)
        run = self.build_run(saga_type, claim.record.saga_id)
        await run.adopt(claim.record, claim.history, claim.lease)
        return run

    def recovery_worker(self, **options: typing.Any) -> RecoveryWorker:
        """A `RecoveryWorker` sharing this mediator's sagas, storage, hooks and settings."""
        from cqrs.saga.recovery import RecoveryWorker

        return RecoveryWorker(self, **options)


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
