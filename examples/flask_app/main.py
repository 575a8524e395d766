"""The order service on Flask: the same service as the FastAPI and Django examples.

    python examples/flask_app/main.py [--port 5000] [--data-dir ./var]
    flask --app main run            # from examples/flask_app (create_app is found by name)

Sagas are stored in SQLite (``<data-dir>/orders.sqlite3``) unless
``CQRS_SAGA_STORAGE_URL`` names another storage, for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/orders``. Other
``CQRS_SAGA_*`` variables tune the engine (``CQRS_SAGA_LEASE_SECONDS``,
``CQRS_SAGA_MAX_BODY_BYTES``, ...; an unknown one stops the start). A
recovery worker runs in the app, so sagas interrupted by a crash are
finished after a restart.

Endpoints:

- ``POST /orders``: 202 with the saga id; the saga runs in the background.
- ``POST /orders/wait``: runs the saga and answers when it has ended (202
  with the status link if it takes longer than ``WAIT_SECONDS``).
- ``POST /orders/stream``: runs the saga, streaming its progress as Server-Sent Events.
- ``GET /sagas`` (filters ``status``, ``name``, ``correlation_id``, ``older_than``;
  ``cursor``), ``GET /sagas/<id>``, ``/sagas/<id>/history``, ``/sagas/<id>/diagram``,
  ``GET /health``: the read-only operator routes.

An order id is used once: a second order with it is a 409.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import types
import typing
import uuid

import flask
from sagas import OrderContext, OrderRequest, OrderSaga, build_container
from werkzeug.serving import make_server

from cqrs.correlation import CorrelationIdFilter
from cqrs.integrations import flask as sagas

DEFAULT_PORT = 5000
#: How long ``POST /orders/wait`` waits before answering 202 with the status link.
WAIT_SECONDS = 10.0
#: Saga ids are derived from order ids in this namespace: one saga per order.
ORDER_NAMESPACE = uuid.UUID("6f1d3c64-2b0e-4d4a-9a57-0b6c1f0e8e21")


def order_saga_id(order_id: str) -> uuid.UUID:
    """The saga id of an order: the same order id always names the same saga."""
    return uuid.uuid5(ORDER_NAMESPACE, order_id)


def storage_url(data_dir: pathlib.Path) -> str:
    """``CQRS_SAGA_STORAGE_URL`` if set, else a SQLite file in ``data_dir`` (created if missing)."""
    url = os.environ.get("CQRS_SAGA_STORAGE_URL")
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(data_dir / 'orders.sqlite3').resolve()}"


def create_app(url: str | None = None, *, data_dir: pathlib.Path = pathlib.Path("var")) -> flask.Flask:
    """The order service over the saga storage at ``url`` (default: see `storage_url`)."""
    app = flask.Flask(__name__)
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("CQRS_SAGA_")})
    app.config["CQRS_SAGA_STORAGE_URL"] = url or storage_url(data_dir)
    sagas.SagaExtension(app, sagas=[OrderSaga], container=build_container(), recovery=True)
    app.register_blueprint(sagas.operator_routes())

    def order() -> tuple[OrderRequest, OrderContext]:
        body = sagas.read_saga_context(OrderRequest)  # 400 / 413 / 422 problem details; nothing stored
        return body, OrderContext.from_request(body)

    @app.post("/orders")
    def create_order() -> flask.Response:
        """Start the order's saga in the background; 202 once it is stored."""
        body, context = order()
        saga_id = sagas.start_saga(context, saga_id=order_saga_id(body.order_id))
        status_url = f"/sagas/{saga_id}"
        response = flask.jsonify(
            {"order_id": body.order_id, "saga_id": str(saga_id), "status": "accepted", "status_url": status_url}
        )
        response.status_code = 202
        response.headers["Location"] = status_url
        return response

    @app.post("/orders/wait")
    def run_order() -> dict[str, typing.Any]:
        """Run the order's saga and report how it ended (202 with the status link if it runs longer)."""
        body, context = order()
        result = sagas.run_saga(context, saga_id=order_saga_id(body.order_id), timeout=WAIT_SECONDS)
        return {"order_id": body.order_id, **result.to_dict()}

    @app.post("/orders/stream")
    def stream_order() -> flask.Response:
        """Run the order's saga, streaming each step as a Server-Sent Event."""
        body, context = order()
        return sagas.saga_event_stream(context, saga_id=order_saga_id(body.order_id))

    return app


def banner(base: str, storage: str) -> str:
    order = '{"order_id": "A-1", "user_id": "U-1", "items": [{"sku": "book", "quantity": 2}], "amount": 42.5}'
    declined = order.replace("A-1", "A-2").replace("42.5", "12000")
    waited = order.replace("A-1", "A-4")
    json_header = "-H 'Content-Type: application/json'"
    return f"""
order service on {base} (sagas stored in {storage}); Ctrl+C stops it

  # start an order in the background (202 with its saga id)
  curl -s -X POST {base}/orders {json_header} -H 'X-Correlation-ID: my-trace-123' -d '{order}'
  # over the payment limit: declined, the reservation is released (compensation)
  curl -s -X POST {base}/orders {json_header} -d '{declined}'
  # run one and wait for the outcome
  curl -s -X POST {base}/orders/wait {json_header} -d '{waited}'
  # the sagas: list, status, history, Mermaid diagram (use an id printed above), health
  curl -s '{base}/sagas?status=failed'
  curl -s {base}/sagas/<saga_id>
  curl -s {base}/sagas/<saga_id>/diagram
  curl -s {base}/health
"""


def _describe(url: str) -> str:
    if "@" in url:  # hide credentials
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s [%(correlation_id)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _stop(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl+C: gracefully


def main(argv: typing.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path("var"),
        help="directory of the SQLite file when CQRS_SAGA_STORAGE_URL is not set (default ./var)",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    app = create_app(data_dir=args.data_dir)
    extension: sagas.SagaExtension = app.extensions["cqrs_saga"]
    extension.initialize(app)  # open the storage now: a wrong URL fails here, not on the first order
    server = make_server(args.host, args.port, app, threaded=True)
    signal.signal(signal.SIGTERM, _stop)
    base = f"http://{args.host}:{server.server_port}"
    print(banner(base, _describe(app.config["CQRS_SAGA_STORAGE_URL"])), flush=True)
    server.serve_forever()  # returns on Ctrl+C / SIGTERM
    print("order service: shutting down (running sagas are finished first)", flush=True)
    extension.close()


if __name__ == "__main__":
    main()
