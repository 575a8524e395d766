"""The process-wide saga runtime of a Django project.

Django views are plain functions on server threads (or coroutines on the
ASGI server's loop); the saga storage's connections belong to one event
loop. So the project's one `SagaRuntime` lives on the process's shared saga
loop (`cqrs.integrations._loop`): sync views block on it, async views await
it without blocking their own loop, and runs handed over after a commit
continue there.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import typing
import uuid

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from cqrs import correlation
from cqrs.config import SagaConfig, configure
from cqrs.integrations._loop import block, shared_loop_thread
from cqrs.integrations._runtime import SagaRuntime
from cqrs.integrations.django._settings import DjangoSagaSettings, load, load_webhooks
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.saga import Saga

logger = logging.getLogger("cqrs.integrations.django")

#: Seconds `setup` (on a settings change) and interpreter exit wait for in-flight runs.
SHUTDOWN_GRACE = 10.0

_lock = threading.Lock()
_current: DjangoSagas | None = None
_atexit_registered = False


class DjangoSagas:
    """One parsed ``CQRS_SAGA`` (or the error that makes it unusable) and its runtime."""

    def __init__(self, settings: DjangoSagaSettings | None, error: ImproperlyConfigured | None = None) -> None:
        self.settings = settings
        self.error = error
        self.runtime = (
            SagaRuntime(settings.config, shutdown_grace=SHUTDOWN_GRACE, prepare=settings.prepare)
            if settings is not None else None
        )

    def require(self) -> DjangoSagaSettings:
        """The parsed settings; `ImproperlyConfigured` if ``CQRS_SAGA`` is invalid."""
        if self.settings is None:
            raise ImproperlyConfigured(f"CQRS_SAGA is invalid: {self.error}") from self.error
        return self.settings

    def require_runtime(self) -> SagaRuntime:
        self.require()
        assert self.runtime is not None
        return self.runtime

    @property
    def config(self) -> SagaConfig:
        return self.require().config

    def saga_for(self, saga_or_context: typing.Any, context: typing.Any) -> tuple[type[Saga[typing.Any]], typing.Any]:
        """The saga class and context of a ``(SagaClass, context)`` or ``(context,)`` call."""
        try:
            return self.require_runtime().saga_for(saga_or_context, context)
        except RuntimeError as error:
            raise ImproperlyConfigured(str(error)) from None

    def mediator(self) -> SagaMediator:
        """The open mediator (opening the storage: an engine, no connection yet, on first use)."""
        return block(self.require_runtime().open())

    def hand_off(self, saga_id: uuid.UUID) -> None:
        """Run a recorded saga in the background (``transaction.on_commit`` calls it).

        If this runtime was replaced meanwhile (``CQRS_SAGA`` changed), the current one runs it.
        """
        target = _current if self.runtime is not None and self.runtime.closed and _current is not None else self
        runtime = target.require_runtime()
        shared_loop_thread().loop.call_soon_threadsafe(runtime.resume_soon, saga_id)

    def shutdown(self, timeout: float = SHUTDOWN_GRACE) -> None:
        if self.runtime is None:
            return
        if not self.runtime.opened and not self.runtime.pending:
            self.runtime.closed = True
            return
        shared_loop_thread().run(self.runtime.aclose(timeout))


# -- the current runtime --------------------------------------------------------------------


def setup() -> DjangoSagas:
    """(Re)read ``settings.CQRS_SAGA`` (and ``CQRS_SAGA_WEBHOOKS``) and make it the current saga runtime.

    The app's ``ready()`` calls it, and so does a change of either setting
    under ``override_settings``. Call it yourself after pointing
    ``DATABASES`` elsewhere (tests). The previous runtime's background runs
    get `SHUTDOWN_GRACE` seconds, then its storage is closed.

    An invalid setting does not raise here: the error is logged, reported by
    ``manage.py check`` (and so by ``runserver`` and ``migrate``) and
    ``saga_check``, and raised by every helper as `ImproperlyConfigured`.
    """
    global _current, _atexit_registered
    parsed: DjangoSagaSettings | None = None
    error: ImproperlyConfigured | None = None
    try:
        parsed = load(getattr(django_settings, "CQRS_SAGA", None))
        load_webhooks(getattr(django_settings, "CQRS_SAGA_WEBHOOKS", None))
    except ImproperlyConfigured as exc:
        error, parsed = exc, None
        logger.error("%s", exc)
    sagas = DjangoSagas(parsed, error)
    with _lock:
        previous, _current = _current, sagas
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
    return sagas


def current() -> DjangoSagas:
    """The runtime `setup` made; `ImproperlyConfigured` if the app is not installed."""
    sagas = _current
    if sagas is None:
        raise ImproperlyConfigured(
            "The saga integration is not set up: add 'cqrs.integrations.django' to INSTALLED_APPS"
        )
    return sagas


def current_or_none() -> DjangoSagas | None:
    return _current


def current_runtime() -> SagaRuntime:
    """The current `SagaRuntime`; `ImproperlyConfigured` when the settings are invalid."""
    return current().require_runtime()


def shutdown(timeout: float = SHUTDOWN_GRACE) -> None:
    """Wait up to ``timeout`` seconds for background runs (then cancel them) and close the storage.

    Runs cancelled here write nothing more and stay recoverable by ``saga_worker``.
    Registered to run at interpreter exit.
    """
    sagas = _current
    if sagas is not None:
        sagas.shutdown(timeout)


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
