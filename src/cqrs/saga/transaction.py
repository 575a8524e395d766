"""`Saga.transaction`: python-cqrs's lower-level way to run a saga, on the same engine.

    async with OrderSaga().transaction(context=ctx, container=container, storage=storage) as tx:
        async for result in tx:
            ...

Each iteration runs the next step and yields its result once its checkpoint
committed, exactly as `SagaMediator.stream` does (the run is built by a
mediator's run factory, so leases, fencing and recovery apply). Differences
from the stream, kept from python-cqrs: steps completed in an earlier run are
skipped rather than replayed, and an exception raised inside the ``async
with`` block (after the loop, or from the loop's body) compensates the steps
completed so far. The saga's correlation id is the caller's current one.
Pass ``mediator=`` (keyword) to build the run with a mediator's hooks, event
handlers and settings instead of the python-cqrs arguments. Leaving the loop early (``break``) compensates nothing: the
saga stays ``running`` and recovery (or another transaction with the same
``saga_id``) takes it up.
"""

from __future__ import annotations

import typing
import uuid

from cqrs import correlation
from cqrs.container.scope import ScopeStrategy
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY, EngineSettings
from cqrs.saga.step import SagaStepHandler, SagaStepResult

if typing.TYPE_CHECKING:
    from cqrs.saga._run import SagaRun
    from cqrs.saga.mediator import SagaMediator
    from cqrs.saga.saga import Saga
    from cqrs.saga.storage.protocol import SagaStorage

__all__ = ["SagaTransaction"]

ContextT = typing.TypeVar("ContextT")
Result = SagaStepResult[typing.Any, typing.Any]


class SagaTransaction(typing.Generic[ContextT]):
    """One run of one saga, driven step by step by its caller (see the module doc)."""

    def __init__(
        self,
        saga: Saga[ContextT],
        context: ContextT,
        container: typing.Any,
        storage: SagaStorage,
        saga_id: uuid.UUID | None = None,
        compensation_retry_count: int = DEFAULT_COMPENSATION_RETRY.attempts,
        compensation_retry_delay: float = DEFAULT_COMPENSATION_RETRY.delay,
        compensation_retry_backoff: float = DEFAULT_COMPENSATION_RETRY.backoff,
        scope_strategy: ScopeStrategy = ScopeStrategy.NONE,
        *,
        settings: EngineSettings | None = None,
        mediator: SagaMediator | None = None,
    ) -> None:
        from cqrs.saga.map import SagaMap
        from cqrs.saga.mediator import SagaMediator

        saga_type = type(saga)
        if mediator is None:
            saga_map = SagaMap()
            saga_map.register(saga_type)
            retry = RetryPolicy(
                attempts=compensation_retry_count, delay=compensation_retry_delay, backoff=compensation_retry_backoff
            )
            mediator = SagaMediator(
                saga_map,
                container,
                storage=storage,
                scope_strategy=scope_strategy,
                settings=settings or EngineSettings(compensation_retry=retry),
            )
        self._context = context
        self._run: SagaRun = mediator.build_run(
            saga_type,
            saga_id or uuid.uuid4(),
            context_builder=type(context),
            correlation_id=correlation.get_correlation_id(),
        )
        self._steps: typing.AsyncGenerator[Result, None] | None = None
        self._completed: list[type[SagaStepHandler[typing.Any, typing.Any]]] = []

    @property
    def saga_id(self) -> uuid.UUID:
        return self._run.saga_id

    @property
    def completed_steps(self) -> list[type[SagaStepHandler[typing.Any, typing.Any]]]:
        """The step classes completed so far, earlier runs' included, in order."""
        return list(self._completed)

    async def __aenter__(self) -> SagaTransaction[ContextT]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        steps, self._steps = self._steps, None
        try:
            if isinstance(exc, Exception):
                # While the paused run still holds the saga (and its container scope, if any).
                await self._run.abort(exc)
        finally:
            if steps is not None:
                await steps.aclose()

    def __aiter__(self) -> typing.AsyncIterator[Result]:
        if self._steps is not None:
            raise RuntimeError("A SagaTransaction is iterated once")
        self._steps = self._advance()
        return self._steps

    async def _advance(self) -> typing.AsyncGenerator[Result, None]:
        run = self._run
        await run.open_new(self._context)
        self._context = run.context  # a stored saga continues with its stored context
        # Closed here, not left to the garbage collector: its cleanup (the run's hold on the
        # saga, its container scope) must happen now, not during a later await.
        steps = typing.cast("typing.AsyncGenerator[Result, None]", run.advance())
        try:
            async for result in steps:
                self._completed.append(result.step_type)
                if not result.replayed:
                    yield result
        finally:
            await steps.aclose()
