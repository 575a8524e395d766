"""Prometheus metrics of saga runs (extra ``prometheus``: ``pip install 'cqrs-saga[prometheus]'``).

Install `SagaMetrics` as a hook (``SagaMediator(..., hooks=[SagaMetrics()])``)
and serve the registry at ``/metrics`` with the helper for your framework:

- FastAPI / Starlette: ``app.mount("/metrics", asgi_app())``
- Flask: ``app.add_url_rule("/metrics", "metrics", flask_view())``, or the
  WSGI app `wsgi_app` behind any WSGI dispatcher
- Django: ``path("metrics", django_view())`` in your URLconf

Metric names and labels are listed on `SagaMetrics`.
"""

from __future__ import annotations

from cqrs.telemetry.metrics._endpoints import asgi_app, django_view, flask_view, render, wsgi_app
from cqrs.telemetry.metrics._hook import SagaMetrics

__all__ = ["SagaMetrics", "asgi_app", "django_view", "flask_view", "render", "wsgi_app"]
