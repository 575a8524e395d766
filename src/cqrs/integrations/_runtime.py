"""The framework-agnostic saga runtime every web integration adapts.

(Over 500 lines on purpose: it is the one place the three frameworks share, so every operation they
expose lives here once rather than three times in the adapters.)

One `SagaRuntime` per app (FastAPI), per Flask app, per Django process: it
opens the config's storage and builds one mediator on first use, runs a
recovery worker and an outbox relay if asked, records sagas and runs them in the background or
until a wait runs out, answers status, history, diagram, list and health,
carries out operator actions, and at shutdown gives background runs a grace
period before closing the storage. Every saga it starts is recorded (with
this process's lease) before the caller answers, and run by the mediator.

FastAPI awaits it on the app's loop; Flask and Django call it on the
process's shared saga loop (`cqrs.integrations._loop`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import typing
import uuid

import pydantic

from cqrs import correlation
from cqrs.config import SagaConfig, open_storage
from cqrs.integrations._background import SagaEventFeed, resume_quietly
from cqrs.integrations._requests import Problem, build_context, check_json, check_text, parse_saga_id
from cqrs.saga import _serialization
from cqrs.saga.exceptions import SagaNotBoundError
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepResult
from cqrs.saga.storage.enums import RESUMABLE, SagaStatus
from cqrs.saga.storage.models import SagaRecord
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.views import history_view, saga_summary, saga_view

if typing.TYPE_CHECKING:
    from cqrs.integrations.webhooks import TriggerDispatcher
    from cqrs.outbox.relay import OutboxRelay
    from cqrs.saga.hooks import Listener
    from cqrs.saga.recovery import RecoveryWorker
    from cqrs.triggers import AcceptedEvent

logger = logging.getLogger("cqrs.integrations")

SagaType = type[Saga[typing.Any]]
RecoveryOption = typing.Optional[typing.Union[bool, typing.Callable[[SagaMediator], "RecoveryWorker"]]]  # noqa: UP007, UP045
#: The most sagas one page of `SagaRuntime.list_sagas` holds.
MAX_PAGE = 500


@dataclasses.dataclass(frozen=True)
class SagaResult:
    """How a saga run ended, in every integration; read fields as attributes or by key.

    ``status`` is ``completed``, or ``failed`` / ``compensation_failed`` with
    ``error`` the failing step's exception; ``results`` are the completed
    steps' `SagaStepResult`s, ``steps`` their responses as JSON by step name;
    ``status_url`` is where the operator routes show the saga.
    """

    saga_id: uuid.UUID
    saga: str
    status: SagaStatus
    results: list[SagaStepResult[typing.Any, typing.Any]]
    error: BaseException | None = None
    correlation_id: str | None = None
    status_url: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == SagaStatus.COMPLETED

    @property
    def steps(self) -> dict[str, typing.Any]:
        return {
            r.step_type.name: _serialization.dump_response(r.response)
            if isinstance(r.response, pydantic.BaseModel)
            else None
            for r in self.results
        }

    def __getitem__(self, key: str) -> typing.Any:
        if key not in _RESULT_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, typing.Any]:
        """JSON-ready: ``saga_id``, ``saga``, ``status``, ``correlation_id``, ``completed_steps``
        (``{"step", "response"}`` in run order), ``error`` and ``status_url``."""
        return {
            "saga_id": str(self.saga_id),
            "saga": self.saga,
            "status": self.status.value,
            "correlation_id": self.correlation_id,
            "completed_steps": [{"step": name, "response": response} for name, response in self.steps.items()],
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            "status_url": self.status_url,
        }


_RESULT_KEYS = frozenset({f.name for f in dataclasses.fields(SagaResult)} | {"succeeded", "steps"})


class SagaStillRunning(TimeoutError):
    """A run outlasted its wait; the saga ``saga_id`` runs on to its end.

    Every integration answers it ``202 Accepted`` with the saga's status link
    (``Location`` and ``status_url``), unless the app handles it first.
    """

    def __init__(self, saga_id: uuid.UUID, timeout: float, status_url: str) -> None:
        self.saga_id = saga_id
        self.timeout = timeout
        self.status_url = status_url
        super().__init__(f"Saga {saga_id} is still running after {timeout:g}s; it finishes in the background")

    def to_dict(self) -> dict[str, typing.Any]:
        """The 202 body: ``saga_id``, ``status`` (``running``), ``status_url``, ``detail``."""
        return {"saga_id": str(self.saga_id), "status": "running", "status_url": self.status_url, "detail": str(self)}


class SagaRuntime:
    """One app's open storage, mediator, recovery worker and background runs.

    ``recovery``: True/False, a function building the worker from the
    mediator, or None to follow ``config.recovery``. ``status_path`` is
    where the operator routes are mounted (for status links).
    ``prepare`` turns the config into the one to open, at open time (Django
    derives the storage URL from the database then).
    """

    def __init__(
        self,
        config: SagaConfig,
        *,
        recovery: RecoveryOption = None,
        shutdown_grace: float = 10.0,
        status_path: str = "/sagas",
        prepare: typing.Callable[[SagaConfig], SagaConfig] | None = None,
    ) -> None:
        self.config = config
        self.recovery_option = recovery
        self.shutdown_grace = shutdown_grace
        self.status_path = status_path.rstrip("/")
        self._prepare = prepare
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._mediator: SagaMediator | None = None
        self._owned: SagaStorage | None = None
        self._open_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[typing.Any]] = set()
        self.recovery: RecoveryWorker | None = None
        self.recovery_task: asyncio.Task[None] | None = None
        self.relay: OutboxRelay | None = None
        self.relay_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def opened(self) -> bool:
        return self._mediator is not None and self._pid == os.getpid()

    async def open(self) -> SagaMediator:
        """Open the storage and build the mediator (first call; later calls return it)."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's connections are the parent's; close nothing
        if self._mediator is not None:
            return self._mediator
        if self.closed:
            raise RuntimeError("This saga runtime was shut down")
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._mediator is None:
                config = self._prepare(self.config) if self._prepare is not None else self.config
                storage = config.storage
                if storage is None:
                    storage = self._owned = await open_storage(config.storage_url, create_tables=config.create_tables)
                relay = _relay_for(config, storage)
                mediator = config.mediator(storage, hooks=() if relay is None else (relay.waker(),))
                wanted = config.recovery if self.recovery_option is None else self.recovery_option
                if wanted is True:
                    self.recovery = mediator.recovery_worker(poll_interval=config.recovery_interval)
                elif callable(wanted):
                    self.recovery = wanted(mediator)
                if self.recovery is not None:
                    self.recovery_task = asyncio.ensure_future(self.recovery.run())
                if relay is not None:
                    self.relay, self.relay_task = relay, asyncio.ensure_future(relay.run())
                self._mediator = mediator
        return self._mediator

    @property
    def mediator(self) -> SagaMediator:
        """The open mediator; `RuntimeError` before `open`."""
        if self._mediator is None:
            raise RuntimeError("The saga runtime is not open yet (the integration opens it at startup or first use)")
        return self._mediator

    @property
    def storage(self) -> SagaStorage:
        return self.mediator.storage

    @property
    def pending(self) -> int:
        """Background runs not finished yet."""
        return len(self._tasks)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background run is going; False if some still run after ``timeout`` (they go on)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        me = asyncio.current_task()
        while True:
            pending = {task for task in self._tasks if task is not me and not task.done()}
            if not pending:
                return True
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(pending, timeout=left)

    async def aclose(self, grace: float | None = None) -> None:
        """Stop recovery, give background runs ``grace`` seconds (then cancel them), stop the relay (after
        the pass under way), close the storage.

        Cancelled runs write nothing more and stay recoverable.
        """
        self.closed = True
        if self._pid != os.getpid():
            return
        try:
            if self.recovery is not None:
                self.recovery.stop()
            grace = self.shutdown_grace if grace is None else grace
            pending = {task for task in self._tasks if task is not asyncio.current_task()}
            if pending:
                _, late = await asyncio.wait(pending, timeout=grace)
                for task in late:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if self.recovery_task is not None:
                try:
                    await self.recovery_task
                except Exception:
                    logger.exception("The saga recovery worker stopped with an error")
            if self.relay is not None and self.relay_task is not None:
                self.relay.stop()
                try:
                    await self.relay_task
                except Exception:
                    logger.exception("The outbox relay stopped with an error")
        finally:
            owned, self._owned, self._mediator = self._owned, None, None
            if owned is not None:
                await owned.close()

    # -- starting and running ---------------------------------------------------------------

    def status_url(self, saga_id: uuid.UUID) -> str:
        return f"{self.status_path}/{saga_id}"

    def saga_for(self, saga_or_context: typing.Any, context: typing.Any = None) -> tuple[SagaType, typing.Any]:
        """The saga class and context of a ``(SagaClass, context)`` or ``(context,)`` call.

        With a saga class the context may be a mapping, validated into its
        context type (`Problem` 422 naming each bad field). The saga must be
        among the config's sagas, so that recovery can finish it.
        """
        saga_map = self.config.saga_map
        if isinstance(saga_or_context, type) and issubclass(saga_or_context, Saga):
            saga_type = saga_or_context
            if context is None:
                raise TypeError(f"Pass the context to run: ({saga_type.__name__}, context)")
            if saga_map.by_name(saga_type.name) is not saga_type:
                raise RuntimeError(
                    f"{saga_type.__qualname__} is not among the app's sagas; list it in the config's sagas "
                    "(SagaConfig(sagas=[...]), CQRS_SAGA['SAGAS']) so that recovery can finish it"
                )
            if isinstance(context, typing.Mapping) and saga_type.context_type is not None:
                context = build_context(saga_type.context_type, context)
            if saga_map.get(type(context)) is not saga_type:
                raise TypeError(f"{saga_type.__qualname__} does not run on {type(context).__qualname__} contexts")
            return saga_type, context
        if context is not None:
            raise TypeError("Pass either (SagaClass, context) or (context,)")
        try:
            return saga_map.saga_for(type(saga_or_context)), saga_or_context
        except SagaNotBoundError:
            raise RuntimeError(
                f"No saga of the app runs on {type(saga_or_context).__qualname__}; "
                "list it in the config's sagas (SagaConfig(sagas=[...]), CQRS_SAGA['SAGAS'])"
            ) from None

    async def _record(
        self,
        saga_type: SagaType,
        context: typing.Any,
        saga_id: uuid.UUID | None,
        correlation_id: str | None,
        events: typing.Sequence[object] = (),
    ) -> tuple[uuid.UUID, str]:
        mediator = await self.open()
        check_json(_serialization.dump_context(context), status=422)
        saga_id = saga_id or uuid.uuid4()
        cid = correlation.accept_correlation_id(correlation_id or correlation.get_correlation_id())
        if not await mediator.record(saga_type, context, saga_id, correlation_id=cid, events=events):
            raise Problem(409, f"Saga id {saga_id} is already used by a stored saga")
        log_accepted(saga_id, saga_type.name, cid)
        return saga_id, cid

    async def start_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        events: typing.Sequence[object] = (),
    ) -> uuid.UUID:
        """Record a new saga (409 if ``saga_id`` is taken), run it in the background, return its id.

        The saga is stored (with this process's lease) before this returns; if
        the process dies first, recovery finishes it. ``correlation_id``
        defaults to the current one (the request's), else a fresh one.
        ``events``: notification events written to the outbox in the saga's
        first commit (the config's ``outbox`` must be on).
        """
        saga_type, value = self.saga_for(saga_or_context, context)
        recorded, _ = await self._record(saga_type, value, saga_id, correlation_id, events)
        self.spawn(recorded)
        return recorded

    async def run_saga(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> SagaResult:
        """Record a new saga (as `start_saga`) and wait up to ``timeout`` seconds for its end.

        A failing step does not raise: the result has the status and error.
        If the run outlasts ``timeout``, `SagaStillRunning` is raised and the
        saga runs on to its end (so it does if the caller goes away).
        """
        saga_type, value = self.saga_for(saga_or_context, context)
        recorded, cid = await self._record(saga_type, value, saga_id, correlation_id)
        task = self._track(self.mediator.resume(recorded, saga_type))
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            raise SagaStillRunning(recorded, timeout or 0.0, self.status_url(recorded))
        outcome: SagaOutcome = task.result()
        return SagaResult(
            outcome.saga_id, saga_type.name, outcome.status, outcome.results, outcome.error, cid,
            self.status_url(recorded),
        )

    async def event_feed(
        self,
        saga_or_context: typing.Any,
        context: typing.Any = None,
        *,
        saga_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
    ) -> tuple[dict[str, typing.Any], SagaEventFeed]:
        """Record a new saga, run it in the background, and return its ``start`` event and its event feed."""
        saga_type, value = self.saga_for(saga_or_context, context)
        recorded, cid = await self._record(saga_type, value, saga_id, correlation_id)
        start = {"type": "start", "saga_id": str(recorded), "saga": saga_type.name, "correlation_id": cid,
                 "status_url": self.status_url(recorded)}
        return start, SagaEventFeed(self.spawn, self.mediator.storage, recorded)

    def resume_soon(self, saga_id: uuid.UUID) -> None:
        """Open if needed, then run a recorded saga in the background; call on the runtime's loop.

        Tracked from this call on, so `wait_idle` waits for it (Django hands
        sagas started in a transaction over this way once it commits).
        """
        self._track(self._open_and_resume(saga_id))

    def start_soon(
        self,
        saga_type: SagaType,
        context: typing.Any,
        saga_id: uuid.UUID,
        correlation_id: str | None,
        events: typing.Sequence[object] = (),
    ) -> None:
        """Record and run a new saga in the background; call on the runtime's loop. Failures are logged."""
        self._track(self._start_logged(saga_type, context, saga_id, correlation_id, events))

    async def _open_and_resume(self, saga_id: uuid.UUID) -> SagaOutcome | None:
        try:
            mediator = await self.open()
        except Exception:
            logger.exception("Could not open the saga storage to run saga %s; recovery will run it", saga_id)
            return None
        return await resume_quietly(mediator, saga_id)

    async def _start_logged(
        self,
        saga_type: SagaType,
        context: typing.Any,
        saga_id: uuid.UUID,
        correlation_id: str | None,
        events: typing.Sequence[object],
    ) -> None:
        correlation.set_correlation_id(correlation_id)  # this task's own context: as a request's would be
        try:
            await self.start_saga(saga_type, context, saga_id=saga_id, correlation_id=correlation_id, events=events)
        except Exception:
            logger.exception("Saga %s (%s) could not be started", saga_id, saga_type.name)

    def spawn(self, saga_id: uuid.UUID, listener: Listener | None = None) -> asyncio.Task[SagaOutcome | None]:
        """Run a recorded saga in the background (``listener`` gets its `SagaEvent`s); errors are logged."""
        return self._track(resume_quietly(self.mediator, saga_id, listener=listener))

    def _track(self, coro: typing.Coroutine[typing.Any, typing.Any, typing.Any]) -> asyncio.Task[typing.Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[typing.Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("A saga run stopped: %r; recovery will finish the saga", task.exception())

    # -- reading stored sagas ---------------------------------------------------------------

    async def _record_of(self, saga_id: uuid.UUID | str) -> SagaRecord:
        parsed = parse_saga_id(saga_id)
        record = await (await self.open()).storage.get_saga(parsed)
        if record is None:
            raise Problem(404, f"No saga with id {parsed}")
        return record

    async def saga_status(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """The stored saga as JSON (`cqrs.saga.views.saga_view`); 404 unknown, 422 malformed id."""
        record = await self._record_of(saga_id)
        return saga_view(record, await self.storage.get_history(record.saga_id) or [])

    async def saga_history(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """``{"saga_id", "status", "history"}``: the step log in write order (`cqrs.saga.views.history_view`)."""
        record = await self._record_of(saga_id)
        history = await self.storage.get_history(record.saga_id) or []
        return {"saga_id": str(record.saga_id), "status": record.status.value, "history": history_view(history)}

    async def saga_diagram(self, saga_id: uuid.UUID | str) -> str:
        """Mermaid source of the saga's run, its completed, compensated and failed steps marked."""
        return (await self._diagram(saga_id))[1]

    async def saga_diagram_document(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """``{"saga_id", "status", "diagram"}``: the diagram with the status it was drawn at."""
        record, diagram = await self._diagram(saga_id)
        return {"saga_id": str(record.saga_id), "status": record.status.value, "diagram": diagram}

    async def _diagram(self, saga_id: uuid.UUID | str) -> tuple[SagaRecord, str]:
        from cqrs.saga.mermaid import SagaMermaid

        record = await self._record_of(saga_id)
        saga_type = self.config.saga_map.by_name(record.name)
        if saga_type is None:
            raise Problem(404, f"Saga {record.saga_id} is a {record.name!r}, which this application does not define")
        return record, SagaMermaid(saga_type).run_diagram(await self.storage.get_history(record.saga_id) or [])

    async def list_sagas(
        self,
        *,
        status: typing.Collection[SagaStatus] | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        older_than: datetime.timedelta | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, typing.Any]:
        """A page of stored sagas, oldest first: ``{"sagas": [...], "next_cursor"}``.

        Filters: any of ``status``, the saga ``name``, ``correlation_id``,
        created at least ``older_than`` ago. ``cursor`` is a page's
        ``next_cursor`` (None on the last page); ``limit`` is 1 to 500.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise Problem(422, f"limit must be from 1 to {MAX_PAGE}, got {limit}")
        for text, what in ((name, "name"), (correlation_id, "correlation_id"), (cursor, "cursor")):
            if text is not None:
                check_text(text, what, status=422)
        storage = (await self.open()).storage
        after = None
        if cursor is not None:
            try:
                after = await storage.get_saga(uuid.UUID(cursor))
            except ValueError:
                after = None
            if after is None:
                raise Problem(422, "cursor names no stored saga (use a page's next_cursor)")
        records = await storage.list_sagas(
            status=status or None, name=name, correlation_id=correlation_id, older_than=older_than,
            after=after, limit=limit + 1,
        )
        more = len(records) > limit
        return {
            "sagas": [{**saga_summary(r), "status_url": self.status_url(r.saga_id)} for r in records[:limit]],
            "next_cursor": str(records[limit - 1].saga_id) if more else None,
        }

    async def health(self) -> dict[str, typing.Any]:
        """``{"status": "ok", ...}`` when the storage answers a query; `Problem` 503 when it does not."""
        try:
            storage = (await self.open()).storage
            await storage.list_sagas(limit=1)
        except Exception as error:
            logger.warning("health check: the saga storage is unavailable: %s", error)
            raise Problem(503, f"The saga storage is unavailable: {type(error).__name__}: {error}") from None
        return {
            "status": "ok",
            "storage": type(storage).__name__,
            "sagas": [saga_type.name for saga_type in self.config.saga_map.sagas()],
            "background_runs": self.pending,
            "recovery": self.recovery is not None,
            "relay": None if self.relay is None else {
                "published": self.relay.published, "failed": self.relay.failed, "parked": self.relay.parked,
            },
        }

    # -- operator actions -------------------------------------------------------------------

    async def recover_saga(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """Run a stored saga now (`SagaMediator.resume`, in the background) rather than at recovery's next pass.

        409 for a saga that is final, parked (reset it first), or leased by a live runner.
        """
        record = await self._record_of(saga_id)
        if record.status not in RESUMABLE:
            advice = "; reset it first" if record.status == SagaStatus.PARKED else ""
            raise Problem(409, f"Saga {record.saga_id} is {record.status.value}: nothing to recover{advice}")
        expires = record.lease_expires_at
        if record.owner and expires is not None:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=datetime.timezone.utc)
            if expires > datetime.datetime.now(datetime.timezone.utc):
                raise Problem(409, f"Saga {record.saga_id} is being run by {record.owner} (lease until {expires})")
        self.spawn(record.saga_id)
        return {"saga_id": str(record.saga_id), "status": "recovering", "status_url": self.status_url(record.saga_id)}

    async def park_saga(self, saga_id: uuid.UUID | str, reason: str) -> dict[str, typing.Any]:
        """Take a saga out of recovery (`park_saga`); 409 for one that already finished."""
        record = await self._record_of(saga_id)
        check_text(reason, "reason", status=422)
        if record.status in (SagaStatus.COMPLETED, SagaStatus.FAILED):
            raise Problem(409, f"Saga {record.saga_id} is {record.status.value}: there is nothing to park")
        await self.storage.park_saga(record.saga_id, reason or "parked by an operator")
        return await self.saga_status(record.saga_id)

    async def reset_saga(self, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
        """Make a parked or stuck saga recoverable again with fresh attempts (`reset_saga`); 409 if finished."""
        record = await self._record_of(saga_id)
        if record.status in (SagaStatus.COMPLETED, SagaStatus.FAILED):
            raise Problem(409, f"Saga {record.saga_id} is {record.status.value}: there is nothing to reset")
        await self.storage.reset_saga(record.saga_id)
        return await self.saga_status(record.saga_id)

    # -- webhooks ---------------------------------------------------------------------------

    async def accept_event(
        self,
        dispatcher: TriggerDispatcher,
        source: str,
        body: bytes,
        headers: typing.Mapping[str, str],
        correlation_id: str | None = None,
    ) -> AcceptedEvent:
        """Record the sagas a delivered event starts (see `TriggerDispatcher.accept`) and run them in the background."""
        mediator = await self.open()
        accepted = await dispatcher.accept(mediator, source, body, headers, correlation_id=correlation_id)
        for saga in accepted.started:
            log_accepted(saga.saga_id, saga.saga, saga.correlation_id)
            self.spawn(saga.saga_id)
        return accepted

    async def event_status(
        self, dispatcher: TriggerDispatcher, source: str, correlation_id: str
    ) -> dict[str, typing.Any]:
        """The stored state of the sagas an event of ``source`` started (404 if none)."""
        check_text(correlation_id, "the correlation id", status=404)
        return await dispatcher.status((await self.open()).storage, source, correlation_id)


def _relay_for(config: SagaConfig, storage: SagaStorage) -> OutboxRelay | None:
    """The relay ``config.relay`` asks for, over ``storage``'s outbox (None when it asks for none)."""
    if not config.relay:
        return None
    from cqrs.outbox.protocol import OutboxStorage
    from cqrs.outbox.relay import OutboxRelay

    if not isinstance(storage, OutboxStorage) or config.message_broker is None:
        raise RuntimeError(f"{type(storage).__name__} has no outbox for the relay to publish")
    return OutboxRelay(
        storage, config.message_broker, poll_interval=config.relay_interval, lease_seconds=config.lease_seconds
    )


def log_accepted(saga_id: uuid.UUID, name: str, correlation_id: str | None) -> None:
    """The integrations' INFO record of a saga accepted (recorded to run), with its saga and correlation ids.

    The run's own story (started, resumed, completed, failed) is told by the run hooks.
    """
    token = correlation._correlation_id.set(correlation_id)
    saga_token = correlation._saga_id.set(saga_id)
    try:
        logger.info(
            "Saga %s (%s) accepted; correlation id %s", saga_id, name, correlation_id,
            extra={"saga_event": "accepted", "saga_name": name},
        )
    finally:
        correlation._saga_id.reset(saga_token)
        correlation._correlation_id.reset(token)

