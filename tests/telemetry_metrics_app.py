"""A web app of one framework serving ``/metrics`` after a mixed run of sagas, for the metrics tests.

    python tests/telemetry_metrics_app.py fastapi|flask|django

At start-up it runs, with `SagaMetrics` installed (through the testing
harness, on memory storage): 3 sagas that complete, 2 that fail and are
compensated, one crashed after its first commit and one whose lease is lost
mid-step (both then recovered), and one whose compensation fails, retried
once by recovery and then parked. Then it serves the framework's own way on
a free loopback port and prints ``ready PORT``; the test scrapes and stops it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prometheus_client import CollectorRegistry

from cqrs.saga.retry import RetryPolicy
from cqrs.telemetry import metrics
from cqrs.testing import SagaHarness
from shop_saga import ShopContext, ShopSaga

REGISTRY = CollectorRegistry()


async def mixed_run() -> None:
    saga_metrics = metrics.SagaMetrics(REGISTRY)
    saga_metrics.track_outbox_backlog(lambda: 7)
    harness = SagaHarness(ShopSaga, hooks=[saga_metrics], compensation_retry=RetryPolicy(attempts=1))
    for n in range(3):
        await harness.run(ShopContext(f"ok-{n}"))
    for n in range(2):
        await harness.run(ShopContext(f"declined-{n}", fail_at="charge"))
    harness.crash_after_commit("reserve")
    await harness.run(ShopContext("crashed"))
    harness.lose_lease("charge")
    await harness.run(ShopContext("lost"))
    assert await harness.recover() == 2
    await harness.run(ShopContext("stuck", fail_at="ship", stuck="reserve"))
    assert await harness.recover(max_attempts=1) == 2  # one retry of its compensation, then parked


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def ready(port: int) -> None:
    print(f"ready {port}", flush=True)


def serve_fastapi() -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    app.mount("/metrics", metrics.asgi_app(REGISTRY))
    sock = listening_socket()
    ready(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def serve_flask() -> None:
    from flask import Flask
    from werkzeug.serving import make_server

    app = Flask(__name__)
    app.add_url_rule("/metrics", "metrics", metrics.flask_view(REGISTRY))
    server = make_server("127.0.0.1", 0, app)
    ready(server.server_port)
    server.serve_forever()


def serve_django() -> None:
    import django
    from django.conf import settings
    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer
    from django.core.wsgi import get_wsgi_application
    from django.urls import path

    settings.configure(
        DEBUG=False, ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__, SECRET_KEY="metrics-test", MIDDLEWARE=[]
    )
    django.setup()
    global urlpatterns
    urlpatterns = [path("metrics", metrics.django_view(REGISTRY))]
    server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(get_wsgi_application())
    ready(server.server_port)
    server.serve_forever()


urlpatterns: list[object] = []

if __name__ == "__main__":
    asyncio.run(mixed_run())
    {"fastapi": serve_fastapi, "flask": serve_flask, "django": serve_django}[sys.argv[1]]()
