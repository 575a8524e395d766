"""The process-wide saga runtime of a Django project.

Django views are plain functions on server threads (or coroutines on the ASGI
server's loop); the saga storage's connections belong to one event loop. So
every saga coroutine runs on the process's one long-lived loop in a daemon
thread (`cqrs.integrations._loop.shared_loop_thread`): sync views block on it, async views
await it without blocking their own loop, and runs handed over after a commit
continue there.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import typing
import uuid

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation  # type: ignore[import-untyped]

from cqrs import correlation
from cqrs.config import SagaConfig, configure
from cqrs.integrations._background import resume_quietly
from cqrs.integrations._loop import shared_loop_thread
from cqrs.integrations._requests import parse_saga_id
from cqrs.integrations.django._settings import DjangoSagaSettings, load
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.saga import Saga

if typing.TYPE_CHECKING:
    from cqrs.saga.recovery import RecoveryWorker

logger = logging.getLogger("cqrs.integrations.django")

T = typing.TypeVar("T")

#: Seconds `setup` (on a settings change) and interpreter exit wait for in-flight runs.
SHUTDOWN_GRACE = 10.0

_lock = threading.Lock()
_current: SagaRuntime | None = None
_atexit_registered = False


class SagaRuntime:
    """One parsed ``CQRS_SAGA``: its config, its open storage (on the saga loop) and its runs."""

    def __init__(self, settings: DjangoSagaSettings | None, error: ImproperlyConfigured | None = None) -> None:
        self.settings = settings
        self.error = error
        self.closed = False
        self._mediator: SagaMediator | None = None
        self._open_lock: asyncio.Lock | None = None
        self._pid = os.getpid()
        self._pending: set[concurrent.futures.Future[typing.Any]] = set()
        self._pending_lock = threading.Lock()
        self._recovery: RecoveryWorker | None = None
        self._recovery_task: asyncio.Task[None] | None = None

    # -- configuration ------------------------------------------------------------------

    def require(self) -> DjangoSagaSettings:
        """The parsed settings; `ImproperlyConfigured` if ``CQRS_SAGA`` is invalid."""
        if self.settings is None:
            raise ImproperlyConfigured(f"CQRS_SAGA is invalid: {self.error}") from self.error
        return self.settings

    @property
    def config(self) -> SagaConfig:
        return self.require().config

    def saga_for(self, saga_or_context: typing.Any, context: typing.Any) -> tuple[type[Saga[typing.Any]], typing.Any]:
        """The saga class and context of a ``(SagaClass, context)`` or ``(context,)`` call."""
        saga_map = self.config.saga_map
        if isinstance(saga_or_context, type) and issubclass(saga_or_context, Saga):
            if context is None:
                raise TypeError(f"Pass the context to run: ({saga_or_context.__name__}, context)")
            saga_type = saga_or_context
            if saga_map.by_name(saga_type.name) is not saga_type:
                raise ImproperlyConfigured(
                    f"{saga_type.__qualname__} is not in CQRS_SAGA['SAGAS']; list it there "
                    f"('{saga_type.__module__}.{saga_type.__qualname__}') so saga_worker can recover it"
                )
            bound = saga_map.get(type(context))
            if bound is not saga_type:
                raise TypeError(
                    f"{saga_type.__qualname__} does not run on {type(context).__qualname__} contexts"
                    + (f" ({bound.__qualname__} does)" if bound is not None else "")
                )
            return saga_type, context
        if context is not None:
            raise TypeError("Pass either (SagaClass, context) or (context,)")
        return saga_map.saga_for(type(saga_or_context)), saga_or_context

    # -- the saga loop --------------------------------------------------------------------

    async def open(self) -> SagaMediator:
        """Open the storage (first call) and return the mediator; runs on the saga loop."""
        if self._pid != os.getpid():
            self._forget_after_fork()
        if self._mediator is not None:
            return self._mediator
        if self.closed:
            raise RuntimeError("This saga runtime was shut down (CQRS_SAGA changed, or the process is exiting)")
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._mediator is None:
                settings = self.require()
                settings.resolve_storage_url()
                await settings.config.initialize()
                mediator = settings.config.mediator()
                if settings.config.recovery:
                    self._recovery = settings.config.recovery_worker()
                    self._recovery_task = asyncio.ensure_future(self._recovery.run())
                self._mediator = mediator
        return self._mediator

    def _forget_after_fork(self) -> None:
        # The parent's connections belong to the parent's loop: start afresh, close nothing.
        self._pid = os.getpid()
        self._mediator = None
        self._open_lock = None
        self._pending = set()
        self._recovery = self._recovery_task = None
        if self.settings is not None:
            self.settings.config.storage = None

    def track(self, coro: typing.Coroutine[typing.Any, typing.Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the saga loop in the background; `wait` and `shutdown` wait for it."""
        future = shared_loop_thread().submit(coro)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._untrack)
        return future

    def _untrack(self, future: concurrent.futures.Future[typing.Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def hand_off(self, saga_id: uuid.UUID) -> None:
        """Run a recorded saga in the background (called by ``transaction.on_commit``).

        If this runtime was replaced meanwhile (``CQRS_SAGA`` changed), the current one runs it.
        """
        runtime = _current if self.closed and _current is not None else self
        runtime.track(runtime.resume_quietly(saga_id))

    async def resume_quietly(self, saga_id: uuid.UUID) -> SagaOutcome | None:
        try:
            mediator = await self.open()
        except Exception:
            logger.exception("Could not open the saga storage to run saga %s; saga_worker will run it", saga_id)
            return None
        return await resume_quietly(mediator, saga_id, finisher="saga_worker")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background runs started so far end; False if some still run after ``timeout``."""
        with self._pending_lock:
            pending = set(self._pending)
        if not pending:
            return True
        _, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    async def aclose(self, timeout: float) -> None:
        """Stop recovery, give background runs ``timeout`` seconds (then cancel them), close the storage."""
        self.closed = True
        if self._recovery is not None:
            self._recovery.stop()
        with self._pending_lock:
            pending = {asyncio.wrap_future(f) for f in self._pending if not f.done()}
        if self._recovery_task is not None:
            pending.add(self._recovery_task)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._mediator = None
        if self.settings is not None and self._pid == os.getpid():
            await self.settings.config.close()

    def shutdown(self, timeout: float = SHUTDOWN_GRACE) -> None:
        if self._mediator is None and not self._pending:
            self.closed = True
            return
        shared_loop_thread().run(self.aclose(timeout))


# -- the current runtime --------------------------------------------------------------------


def setup() -> SagaRuntime:
    """(Re)read ``settings.CQRS_SAGA`` and make it the current saga runtime.

    The app's ``ready()`` calls it, and so does a change of ``CQRS_SAGA``
    under ``override_settings``. Call it yourself after pointing ``DATABASES``
    elsewhere (tests). The previous runtime's background runs get
    `SHUTDOWN_GRACE` seconds, then its storage is closed.

    An invalid ``CQRS_SAGA`` does not raise here: the error is logged,
    reported by ``manage.py check`` (and so by ``runserver`` and ``migrate``)
    and ``saga_check``, and raised by every helper as `ImproperlyConfigured`.
    """
    global _current, _atexit_registered
    parsed: DjangoSagaSettings | None = None
    error: ImproperlyConfigured | None = None
    try:
        parsed = load(getattr(django_settings, "CQRS_SAGA", None))
    except ImproperlyConfigured as exc:
        error = exc
        logger.error("CQRS_SAGA is invalid: %s", exc)
    runtime = SagaRuntime(parsed, error)
    with _lock:
        previous, _current = _current, runtime
        if not _atexit_registered:
            # The shared loop's own exit hook (registered when it is made) must run after ours.
            shared_loop_thread()
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
    if previous is not None:
        previous.shutdown()
    if parsed is not None:
        configure(parsed.config)
        if parsed.config.logging:
            install_log_filter()
    return runtime


def current() -> SagaRuntime:
    """The runtime `setup` made; `ImproperlyConfigured` if the app is not installed."""
    runtime = _current
    if runtime is None:
        raise ImproperlyConfigured(
            "The saga integration is not set up: add 'cqrs.integrations.django' to INSTALLED_APPS"
        )
    return runtime


def current_or_none() -> SagaRuntime | None:
    return _current


def shutdown(timeout: float = SHUTDOWN_GRACE) -> None:
    """Wait up to ``timeout`` seconds for background runs (then cancel them) and close the storage.

    Runs cancelled here write nothing more and stay recoverable by ``saga_worker``.
    Registered to run at interpreter exit.
    """
    runtime = _current
    if runtime is not None:
        runtime.shutdown(timeout)


def _shutdown_at_exit() -> None:
    with contextlib.suppress(Exception):
        shutdown()


def install_log_filter() -> None:
    """Add a `CorrelationIdFilter` to every configured log handler (once each).

    Log formats may then use ``%(correlation_id)s`` and ``%(saga_id)s``.
    """
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger_ for logger_ in logging.Logger.manager.loggerDict.values() if isinstance(logger_, logging.Logger)
    ]
    for logger_ in loggers:
        for handler in logger_.handlers:
            if not any(isinstance(f, correlation.CorrelationIdFilter) for f in handler.filters):
                handler.addFilter(correlation.CorrelationIdFilter())


# -- running coroutines on the saga loop --------------------------------------------------


def block(coro: typing.Coroutine[typing.Any, typing.Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the saga loop and wait for it, from synchronous code.

    The caller's correlation id goes along. Raises `SynchronousOnlyOperation`
    when called from async code (a running event loop in this thread).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise SynchronousOnlyOperation(
            "This saga helper blocks; from an async view use its awaitable twin "
            "(arun_saga, astart_saga, asaga_status, asaga_diagram)"
        )
    return shared_loop_thread().run(coro, timeout)


async def await_in_loop(coro: typing.Coroutine[typing.Any, typing.Any, T]) -> T:
    """Run ``coro`` on the saga loop and await it from another loop (an async view's).

    If the awaiting view is cancelled (the client went away), the saga work
    still runs to its end.
    """
    future = shared_loop_thread().submit(coro)
    return await asyncio.shield(asyncio.wrap_future(future))


# -- what the public helpers run ------------------------------------------------------------


async def run_coro(
    runtime: SagaRuntime, context: typing.Any, saga_id: uuid.UUID | None, correlation_id: str | None
) -> SagaOutcome:
    mediator = await runtime.open()
    return await mediator.run(context, saga_id, correlation_id=correlation_id)


async def record_coro(
    runtime: SagaRuntime, context: typing.Any, saga_id: uuid.UUID | None, correlation_id: str | None
) -> uuid.UUID:
    mediator = await runtime.open()
    return await mediator.start(context, saga_id, correlation_id=correlation_id)


async def status_coro(runtime: SagaRuntime, saga_id: uuid.UUID | str) -> dict[str, typing.Any]:
    from cqrs.integrations._status import saga_status

    parsed = parse_saga_id(saga_id)
    mediator = await runtime.open()
    return await saga_status(mediator.storage, parsed)


async def diagram_coro(runtime: SagaRuntime, saga_id: uuid.UUID | str) -> str:
    from cqrs.integrations._status import saga_diagram

    parsed = parse_saga_id(saga_id)
    mediator = await runtime.open()
    return await saga_diagram(mediator.storage, mediator.saga_map, parsed)
