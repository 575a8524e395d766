"""`SagaMetrics`: the run hook that counts sagas and times step attempts."""

from __future__ import annotations

import asyncio
import logging
import time
import typing
import weakref

from cqrs.saga.hooks import Action, RunInfo, SagaHook
from cqrs.saga.storage.enums import SagaStatus

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "cqrs.telemetry.metrics needs prometheus-client: pip install 'cqrs-saga[prometheus]'"
    ) from error

if typing.TYPE_CHECKING:
    from cqrs.outbox.protocol import OutboxStorage
    from cqrs.saga.storage.models import SagaRecord

logger = logging.getLogger("cqrs.telemetry")

__all__ = ["SagaMetrics"]

#: Step attempt durations, in seconds: from a millisecond to two minutes.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Collectors:
    """The metric objects of one registry (a registry refuses a name twice, so they are made once)."""

    def __init__(self, registry: CollectorRegistry | None, buckets: typing.Sequence[float]) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels or ("saga",), registry=registry)

        self.started = counter("cqrs_sagas_started", "Sagas recorded and started, by saga name")
        self.resumed = counter(
            "cqrs_sagas_resumed", "Runs that took a stored saga up (recovery, background runs), by saga name"
        )
        self.completed = counter("cqrs_sagas_completed", "Sagas that completed every step")
        self.failed = counter("cqrs_sagas_failed", "Sagas that failed and were compensated")
        self.compensation_failed = counter(
            "cqrs_sagas_compensation_failed", "Sagas whose compensation kept failing (recovery retries them)"
        )
        self.parked = counter("cqrs_sagas_parked", "Sagas a recovery worker took out of recovery")
        self.claims = counter("cqrs_recovery_claims", "Sagas a recovery worker claimed after their runner died")
        self.lease_losses = counter("cqrs_lease_losses", "Runs that stopped because another runner took the saga")
        self.step_seconds = Histogram(
            "cqrs_step_duration_seconds",
            "Duration of each attempt of a step's act or compensate",
            ("saga", "step", "action", "outcome"),
            buckets=tuple(buckets),
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "cqrs_outbox_backlog", "Outbox messages not yet relayed (see SagaMetrics.track_outbox_backlog)",
            registry=registry,
        )


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = weakref.WeakKeyDictionary()


def _collectors(registry: CollectorRegistry, buckets: typing.Sequence[float]) -> _Collectors:
    found = _by_registry.get(registry)
    if found is None:
        found = _by_registry[registry] = _Collectors(registry, buckets)
    return found


class SagaMetrics(SagaHook):
    """Prometheus metrics of every run of a mediator's sagas; a run hook.

    Counters, each labelled ``saga`` (the saga's name):
    ``cqrs_sagas_started_total``, ``cqrs_sagas_resumed_total``,
    ``cqrs_sagas_completed_total``, ``cqrs_sagas_failed_total``,
    ``cqrs_sagas_compensation_failed_total``, ``cqrs_sagas_parked_total``,
    ``cqrs_recovery_claims_total`` and ``cqrs_lease_losses_total``.
    Histogram ``cqrs_step_duration_seconds`` (labels ``saga``, ``step``,
    ``action`` = ``act``/``compensate``, ``outcome`` = ``ok``/``error``): one
    observation per attempt. Gauge ``cqrs_outbox_backlog``: the outbox rows
    waiting to be published, kept by `watch_outbox_backlog` (or what the
    callback given to `track_outbox_backlog` returns, read at each scrape).

    Claims and parked sagas come from the recovery workers of the mediator
    this hook is installed on. Every `SagaMetrics` of one ``registry``
    (default: prometheus-client's global one) shares its metric objects, so
    several mediators may each have one.
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, buckets: typing.Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        self.registry = registry
        self._metrics = _collectors(registry, buckets)
        self._attempts: dict[RunInfo, float] = {}

    def track_outbox_backlog(self, callback: typing.Callable[[], float]) -> None:
        """Report ``callback()`` as ``cqrs_outbox_backlog`` at each scrape (keep it quick: scrapes wait for it)."""
        self._metrics.outbox_backlog.set_function(callback)

    async def watch_outbox_backlog(self, storage: OutboxStorage, *, interval: float = 15.0) -> None:
        """Set ``cqrs_outbox_backlog`` to ``await storage.outbox_backlog()`` every ``interval`` seconds until
        cancelled (run it as a task beside the app). A failed count is logged and tried again next time; the
        gauge keeps its last value meanwhile."""
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        gauge = self._metrics.outbox_backlog
        while True:
            try:
                gauge.set(await storage.outbox_backlog())
            except Exception as error:
                logger.warning("Could not count the outbox backlog: %s", error)
            await asyncio.sleep(interval)

    # -- runs -------------------------------------------------------------------------

    def saga_started(self, run: RunInfo) -> None:
        self._metrics.started.labels(run.saga_name).inc()

    def saga_resumed(self, run: RunInfo) -> None:
        self._metrics.resumed.labels(run.saga_name).inc()

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        metrics = self._metrics
        if status == SagaStatus.COMPLETED:
            metrics.completed.labels(run.saga_name).inc()
        elif status == SagaStatus.COMPENSATION_FAILED:
            metrics.compensation_failed.labels(run.saga_name).inc()
        else:
            metrics.failed.labels(run.saga_name).inc()

    def lease_lost(self, run: RunInfo) -> None:
        self._metrics.lease_losses.labels(run.saga_name).inc()
        self._attempts.pop(run, None)

    # -- step attempts ------------------------------------------------------------------

    def attempt_started(self, run: RunInfo, step: str, action: Action, attempt: int) -> None:
        self._attempts[run] = time.perf_counter()

    def attempt_finished(
        self, run: RunInfo, step: str, action: Action, attempt: int, error: BaseException | None
    ) -> None:
        started = self._attempts.pop(run, None)
        if started is not None:
            self._metrics.step_seconds.labels(run.saga_name, step, action, "ok" if error is None else "error").observe(
                time.perf_counter() - started
            )

    # -- recovery workers -------------------------------------------------------------------

    def recovery_claimed(self, record: SagaRecord) -> None:
        """A recovery worker claimed this saga (its runner died, or it was left pending)."""
        self._metrics.claims.labels(record.name).inc()

    def saga_parked(self, record: SagaRecord, reason: str) -> None:
        """A recovery worker parked this saga after too many attempts."""
        self._metrics.parked.labels(record.name).inc()
