"""OpenTelemetry traces of saga runs (extra ``otel``: ``pip install 'cqrs-saga[otel]'``).

`TracingHook` makes, through the OpenTelemetry API:

- a span per run of a saga (``saga OrderSaga``), from the moment the run
  holds the saga until it ends (completed, failed, lost its lease), with the
  attributes ``cqrs.saga.id``, ``cqrs.saga.name``, ``cqrs.saga.correlation_id``,
  ``cqrs.saga.recovering`` and, at the end, ``cqrs.saga.outcome`` (the final
  status, ``lease_lost`` or ``interrupted``); a failed saga's span has an
  error status, and the failing step's exception recorded;
- under it, a span per attempt of a step's action (``act reserve``,
  ``compensate reserve``), current while the step's code runs, so spans the
  step makes (HTTP calls, queries) are its children; attributes
  ``cqrs.saga.step``, ``cqrs.saga.action``, ``cqrs.saga.attempt`` and
  ``cqrs.saga.outcome`` (``ok`` or ``error``), the exception recorded.

When a saga is started, the trace context of the caller (the request that
started it) is captured with the configured propagator (W3C ``traceparent``
by default) and stored with the saga. A run with no current span of its own,
such as a recovery worker's in another process, continues that trace: its
span is a child of the stored context and carries a link to it.

`SagaMediator` installs tracing by itself when ``opentelemetry`` can be
imported (`cqrs.telemetry.default_hooks`), with no call from the application:

- built once a tracer provider is configured (``trace.set_tracer_provider``
  at start-up, or ``opentelemetry-instrument``), it installs `TracingHook`;
- built before, it installs `RunTracingHook`: nothing on the hot path (no
  hook per step attempt), while a provider is missing nothing at all; once
  one is configured, each run gets its span and each new saga its stored
  trace context, but steps no spans of their own. Pass ``hooks=[TracingHook()]``
  (and ``telemetry=False``) to such a mediator for step spans too.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import typing

from cqrs.saga.hooks import Action, RunInfo, SagaHook
from cqrs.saga.storage.enums import SagaStatus

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "cqrs.telemetry.tracing needs the OpenTelemetry API: pip install 'cqrs-saga[otel]'"
    ) from error

__all__ = ["TRACER_NAME", "RunTracingHook", "TracingHook", "propagation_headers", "tracer_provider_configured"]

#: The instrumentation scope name of every span this module makes.
TRACER_NAME = "cqrs.saga"

#: Runs traced at once by one hook before the oldest is ended as ``abandoned``
#: (a run that stopped without reaching an end the hooks see: a paused stream, a storage error).
MAX_OPEN_RUNS = 10_000

logger = logging.getLogger("cqrs.telemetry")

try:
    _VERSION: str | None = importlib.metadata.version("cqrs-saga")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = None

_NOT_CONFIGURED = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

#: The span of each run a `TracingHook` traces in this process (for `propagation_headers`).
_run_spans: dict[RunInfo, Span] = {}


class _RunTrace:
    """What the hook keeps of one traced run: its span, and its current attempt's span."""

    __slots__ = ("attempt", "context", "span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.attempt: Span | None = None
        self.token: object = None


def tracer_provider_configured() -> bool:
    """Whether the application has set a global tracer provider (spans would go somewhere)."""
    return not isinstance(trace.get_tracer_provider(), _NOT_CONFIGURED)


class RunTracingHook(SagaHook):
    """A span per saga run and the stored trace context, without spans per step attempt.

    What a mediator built before any tracer provider was configured installs
    (see `cqrs.telemetry.default_hooks`): it costs nothing per step, and once
    a provider is configured its runs get spans from the next run on.
    ``tracer_provider``: where spans go; by default the global one, looked
    for at the start of a run (at most once a second until it is there).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider: trace.TracerProvider | None = tracer_provider
        self._tracer: trace.Tracer | None = (
            tracer_provider.get_tracer(TRACER_NAME, _VERSION) if tracer_provider is not None else None
        )
        self._runs: dict[RunInfo, _RunTrace] = {}
        self._look_again_at = 0.0

    def _active_tracer(self) -> trace.Tracer | None:
        """The tracer to use now; None while no tracer provider is configured.

        The global provider can be set once only, so once found it is kept;
        while there is none, it is looked for at most once a second (the
        look-up reads the environment, too dear for every saga).
        """
        if self._tracer is not None:
            return self._tracer
        now = time.monotonic()
        if now < self._look_again_at:
            return None
        self._look_again_at = now + 1.0
        provider = trace.get_tracer_provider()
        if isinstance(provider, _NOT_CONFIGURED):
            return None
        self._provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME, _VERSION)
        return self._tracer

    def active(self) -> bool:
        """Whether spans would go anywhere (a tracer provider is configured): asked as each run is built,
        so until one is, runs do without this hook entirely."""
        return self._active_tracer() is not None

    # -- the saga's origin ---------------------------------------------------------------

    def saga_starting(self, run: RunInfo) -> dict[str, str] | None:
        if self._active_tracer() is None:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    # -- runs ------------------------------------------------------------------------------

    def saga_started(self, run: RunInfo) -> None:
        tracer = self._active_tracer()
        if tracer is not None:
            self._begin(tracer, run)

    def saga_resumed(self, run: RunInfo) -> None:
        tracer = self._active_tracer()
        if tracer is not None:
            self._begin(tracer, run)

    def _begin(self, tracer: trace.Tracer, run: RunInfo) -> None:
        parent: otel_context.Context | None = None
        links: list[Link] = []
        stored = run.trace_context
        if stored:
            origin_context = propagate.extract(stored)
            origin = trace.get_current_span(origin_context).get_span_context()
            current = trace.get_current_span().get_span_context()
            if origin.is_valid and origin != current:
                links.append(Link(origin, {"cqrs.saga.link": "started_by"}))
                if not current.is_valid:
                    parent = origin_context  # nothing of its own to belong to: continue the saga's trace
        attributes: dict[str, str | bool] = {
            "cqrs.saga.id": str(run.saga_id),
            "cqrs.saga.name": run.saga_name,
            "cqrs.saga.recovering": run.recovering,
        }
        if run.correlation_id is not None:
            attributes["cqrs.saga.correlation_id"] = run.correlation_id
        span = tracer.start_span(
            f"saga {run.saga_name}", context=parent, kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        runs = self._runs
        if len(runs) >= MAX_OPEN_RUNS:
            oldest = next(iter(runs))
            self._end(oldest, "abandoned", None)
        runs[run] = _RunTrace(span)
        _run_spans[run] = span

    def _end(self, run: RunInfo, outcome: str, error: str | None) -> None:
        traced = self._runs.pop(run, None)
        if traced is None:
            return
        if _run_spans.get(run) is traced.span:
            del _run_spans[run]
        span = traced.span
        span.set_attribute("cqrs.saga.outcome", outcome)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def step_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        traced = self._runs.get(run)
        if traced is not None:
            traced.span.record_exception(error, {"cqrs.saga.step": step})

    def compensation_started(self, run: RunInfo, error: str | None) -> None:
        traced = self._runs.get(run)
        if traced is not None:
            traced.span.add_event("compensation started", {"cqrs.saga.error": error or ""})

    def compensation_failed(self, run: RunInfo, step: str, error: BaseException) -> None:
        traced = self._runs.get(run)
        if traced is not None:
            traced.span.add_event(
                "compensation failed", {"cqrs.saga.step": step, "cqrs.saga.error": _error_text(error)}
            )

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        if run in self._runs:
            failed = status != SagaStatus.COMPLETED
            self._end(run, status.value, (error or status.value) if failed else None)

    def lease_lost(self, run: RunInfo) -> None:
        traced = self._runs.get(run)
        if traced is not None:
            traced.span.add_event("lease lost", {"cqrs.saga.id": str(run.saga_id)})
            self._end(run, "lease_lost", "another runner took the saga over")



class TracingHook(RunTracingHook):
    """Spans for saga runs and, under them, for each step attempt (see the module docstring).

    ``tracer_provider``: where spans go; by default the global one, looked
    for at the start of a run (at most once a second until it is there).
    """

    def attempt_started(self, run: RunInfo, step: str, action: Action, attempt: int) -> None:
        traced = self._runs.get(run)
        if traced is None:
            return
        tracer = self._tracer
        assert tracer is not None
        attributes: dict[str, str | int] = {
            "cqrs.saga.id": str(run.saga_id),
            "cqrs.saga.name": run.saga_name,
            "cqrs.saga.step": step,
            "cqrs.saga.action": action,
            "cqrs.saga.attempt": attempt,
        }
        if run.correlation_id is not None:
            attributes["cqrs.saga.correlation_id"] = run.correlation_id
        span = tracer.start_span(f"{action} {step}", context=traced.context, attributes=attributes)
        traced.attempt = span
        traced.token = otel_context.attach(trace.set_span_in_context(span))

    def attempt_finished(
        self, run: RunInfo, step: str, action: Action, attempt: int, error: BaseException | None
    ) -> None:
        traced = self._runs.get(run)
        if traced is None or traced.attempt is None:
            return
        span, token = traced.attempt, traced.token
        traced.attempt = traced.token = None
        otel_context.detach(typing.cast("typing.Any", token))
        if error is None:
            span.set_attribute("cqrs.saga.outcome", "ok")
        else:
            span.set_attribute("cqrs.saga.outcome", "error")
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _error_text(error)))
        span.end()
        if error is not None and not isinstance(error, Exception):
            # Cancelled (or stopped harder): the run goes no further.
            self._end(run, "interrupted", _error_text(error))


def propagation_headers(run: RunInfo | None = None) -> dict[str, str]:
    """Trace propagation headers (W3C ``traceparent``, ``tracestate``, ``baggage``) for a message.

    Without ``run``: the current context's; inside a step's code that is the
    step attempt's span. With ``run``: the span of that run if a `TracingHook`
    traces it in this process, else the trace context stored with the saga
    when it started. An empty dict when there is none. Put them in the headers
    of a message a saga sends (the outbox), so its consumer joins the trace.
    """
    carrier: dict[str, str] = {}
    if run is None:
        propagate.inject(carrier)
        return carrier
    span = _run_spans.get(run)
    if span is not None:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return carrier
    return dict(run.trace_context or {})


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
