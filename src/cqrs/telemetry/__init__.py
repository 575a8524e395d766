"""Every saga visible in logs, traces and metrics, through run hooks.

- `cqrs.telemetry.logs`: the logger tree and `LogHook`, an INFO record per
  lifecycle event with structured fields.
- `cqrs.telemetry.tracing`: `TracingHook`, OpenTelemetry spans per run and
  step attempt, trace context stored with each saga (extra ``otel``).
- `cqrs.telemetry.metrics`: `SagaMetrics`, Prometheus counters and
  histograms, and ``/metrics`` endpoints for ASGI, WSGI, Flask and Django
  (extra ``prometheus``).

Every `SagaMediator` installs `default_hooks` unless built with
``telemetry=False``: the logging hook always, tracing when OpenTelemetry can
be imported. Metrics are opt in: pass
``hooks=[SagaMetrics()]``.
"""

from __future__ import annotations

import importlib.util

from cqrs.saga.hooks import SagaHook

__all__ = ["default_hooks", "tracing_available"]


def tracing_available() -> bool:
    """Whether the OpenTelemetry API can be imported (the ``otel`` extra is installed)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ModuleNotFoundError:
        return False


_tracing: bool | None = None


def default_hooks() -> list[SagaHook]:
    """The hooks a mediator installs by default.

    `LogHook`; and, when OpenTelemetry can be imported, `TracingHook` if a
    tracer provider is configured now, else `RunTracingHook` (spans per run
    once one is, and nothing per step: see `cqrs.telemetry.tracing`).
    """
    global _tracing
    from cqrs.telemetry.logs import LeaseLossLogHook, LogHook

    hooks: list[SagaHook] = [LogHook(), LeaseLossLogHook()]
    if _tracing is None:
        _tracing = tracing_available()
    if _tracing:
        from cqrs.telemetry.tracing import RunTracingHook, TracingHook, tracer_provider_configured

        hooks.append(TracingHook() if tracer_provider_configured() else RunTracingHook())
    return hooks
