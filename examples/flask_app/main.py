"""An order service on Flask: sagas run from plain synchronous views, with status pages.

    python examples/flask_app/main.py [--port 5000] [--data-dir ./var]
    flask --app main run            # from examples/flask_app (create_app is found by name)

Sagas are stored in SQLite (``<data-dir>/orders.sqlite3``) unless
``CQRS_SAGA_STORAGE_URL`` names another storage, for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/orders``. Other
``CQRS_SAGA_*`` variables tune the engine (``CQRS_SAGA_LEASE_SECONDS``,
``CQRS_SAGA_MAX_BODY_BYTES``, ...). A recovery worker runs in the app, so
sagas interrupted by a crash are finished after a restart.

Endpoints:

- ``POST /orders``: runs the order saga and answers when it has ended
  (201 completed, 422 declined and compensated). The saga id is derived from
  the order id, so repeating a POST answers with that order's saga.
- ``GET /orders/<order_id>``, ``GET /orders/<order_id>/diagram``: status JSON and Mermaid diagram.
- ``GET /sagas/<saga_id>``, ``GET /sagas/<saga_id>/diagram``: the same, by saga id.
- ``GET /health``: 200 when the storage answers.
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
from cqrs.integrations.flask import BadRequest, SagaExtension, read_saga_context

DEFAULT_PORT = 5000
#: Saga ids are derived from order ids in this namespace: one saga per order.
ORDER_NAMESPACE = uuid.UUID("6f1d3c64-2b0e-4d4a-9a57-0b6c1f0e8e21")


def storage_url(data_dir: pathlib.Path) -> str:
    """``CQRS_SAGA_STORAGE_URL`` if set, else a SQLite file in ``data_dir`` (created if missing)."""
    url = os.environ.get("CQRS_SAGA_STORAGE_URL")
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(data_dir / 'orders.sqlite3').resolve()}"


def order_saga_id(order_id: str) -> uuid.UUID:
    """The saga id of an order: the same order id always names the same saga."""
    return uuid.uuid5(ORDER_NAMESPACE, order_id)


def create_app(url: str | None = None, *, data_dir: pathlib.Path = pathlib.Path("var")) -> flask.Flask:
    """The order service over the saga storage at ``url`` (default: see `storage_url`)."""
    app = flask.Flask(__name__)
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("CQRS_SAGA_")})
    app.config["CQRS_SAGA_STORAGE_URL"] = url or storage_url(data_dir)
    sagas = SagaExtension(app, sagas=[OrderSaga], container=build_container(), recovery=True)
    sagas.register_routes(prefix="/sagas", health="/health")

    def links(order_id: str, saga_id: uuid.UUID | str) -> dict[str, str]:
        return {
            "status_url": f"/sagas/{saga_id}",
            "order_url": f"/orders/{order_id}",
            "diagram_url": f"/orders/{order_id}/diagram",
        }

    @app.post("/orders")
    def create_order() -> flask.Response:
        """Run the order saga within the request; 201 when it completed, 422 when it was compensated."""
        order = read_saga_context(OrderRequest)  # 400 / 413 as JSON; nothing stored
        saga = sagas.create_saga(OrderSaga)
        result = sagas.run_sync(saga, OrderContext.from_request(order), saga_id=order_saga_id(order.order_id))
        body = {"order_id": order.order_id, **result.to_dict(), **links(order.order_id, result["saga_id"])}
        response = flask.jsonify(body)
        response.status_code = 201 if result.succeeded else 422
        response.headers["Location"] = f"/sagas/{result.saga_id}"
        return response

    def known_order(order_id: str) -> uuid.UUID:
        saga_id = order_saga_id(order_id)
        try:
            sagas.saga_status(saga_id)
        except BadRequest as error:
            if error.status == 404:
                raise BadRequest(404, f"No order {order_id!r}") from None
            raise
        return saga_id

    @app.get("/orders/<order_id>")
    def order_status(order_id: str) -> dict[str, typing.Any]:
        """The order's saga: status, completed steps with their responses, failed step, error."""
        return {"order_id": order_id, **sagas.saga_status(known_order(order_id))}

    @app.get("/orders/<order_id>/diagram")
    def order_diagram(order_id: str) -> flask.Response:
        """Mermaid flowchart of the order's saga run, each step marked by outcome."""
        return flask.Response(sagas.saga_diagram(known_order(order_id)), mimetype="text/plain")

    return app


def banner(base: str, storage: str) -> str:
    order = (
        '{"order_id": "ORD-001", "user_id": "USER-123", '
        '"items": [{"id": "ITEM-1", "name": "Widget", "quantity": 2}], "amount": 99.99}'
    )
    declined = order.replace("ORD-001", "ORD-002").replace("99.99", "25000")
    json_header = "-H 'Content-Type: application/json'"
    return f"""
order service on {base} (sagas stored in {storage}); Ctrl+C stops it

  # place an order: runs the saga, answers when it has ended (201)
  curl -s -X POST {base}/orders {json_header} -H 'X-Correlation-ID: my-trace-123' -d '{order}'
  # over the payment limit: declined, the reservation is released (422)
  curl -s -X POST {base}/orders {json_header} -d '{declined}'
  # the order's saga: status and Mermaid diagram
  curl -s {base}/orders/ORD-001
  curl -s {base}/orders/ORD-001/diagram
  # by saga id (from the answers above)
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
    sagas: SagaExtension = app.extensions["cqrs_saga"]
    sagas.initialize(app)  # open the storage now: a wrong URL fails here, not on the first order
    server = make_server(args.host, args.port, app, threaded=True)
    signal.signal(signal.SIGTERM, _stop)
    base = f"http://{args.host}:{server.server_port}"
    print(banner(base, _describe(app.config["CQRS_SAGA_STORAGE_URL"])), flush=True)
    server.serve_forever()  # returns on Ctrl+C / SIGTERM
    print("order service: shutting down (running sagas are finished first)", flush=True)
    sagas.close()


if __name__ == "__main__":
    main()
