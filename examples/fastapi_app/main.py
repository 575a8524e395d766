"""The order service on FastAPI: the same service as the Flask and Django examples.

    python examples/fastapi_app/main.py [--port 8000] [--data-dir ./var]

Sagas are stored in SQLite (``<data-dir>/orders.sqlite3``) unless
``CQRS_SAGA_STORAGE_URL`` names another storage, for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/orders``. Other
``CQRS_SAGA_*`` variables tune the engine (``CQRS_SAGA_LEASE_SECONDS``,
``CQRS_SAGA_RECOVERY_INTERVAL``, ...; an unknown one stops the start). A
recovery worker runs in the app, so sagas interrupted by a crash are
finished after a restart.

Endpoints (request bodies are documented at ``/docs``):

- ``POST /orders``: 202 with the saga id; the saga runs in the background.
- ``POST /orders/wait``: runs the saga and answers when it has ended (202
  with the status link if it takes longer than ``WAIT_SECONDS``).
- ``POST /orders/stream``: runs the saga, streaming its progress as Server-Sent Events.
- ``GET /sagas`` (filters ``status``, ``name``, ``correlation_id``, ``older_than``;
  ``cursor``), ``GET /sagas/{id}``, ``/sagas/{id}/history``, ``/sagas/{id}/diagram``,
  ``GET /health``: the read-only operator routes.

An order id is used once: a second order with it is a 409.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import typing
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sagas import OrderContext, OrderRequest, OrderSaga, build_container

from cqrs.config import SagaConfig
from cqrs.correlation import CorrelationIdFilter
from cqrs.integrations import fastapi as saga_api

DEFAULT_PORT = 8000
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


def create_app(url: str, *, base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}") -> FastAPI:
    """The order service over the saga storage at ``url``."""
    config = SagaConfig.from_env(storage_url=url, sagas=[OrderSaga], container=build_container())

    @contextlib.asynccontextmanager
    async def announce(app: FastAPI) -> typing.AsyncIterator[None]:
        # Run inside the saga lifespan: the storage is open here.
        print(_banner(base_url, _describe(url)), flush=True)
        yield
        print("order service: shutting down (running sagas are finished first)", flush=True)

    app = FastAPI(title="Order service (cqrs-saga example)", lifespan=announce)
    saga_api.init_app(app, config, recovery=True)
    app.include_router(saga_api.operator_routes())

    @app.post("/orders", status_code=202, response_model=None)
    async def create_order(order: OrderRequest, runtime: saga_api.Runtime) -> JSONResponse:
        """Start the order's saga in the background; 202 once it is stored."""
        saga_id = await runtime.start_saga(OrderContext.from_request(order), saga_id=order_saga_id(order.order_id))
        status_url = runtime.status_url(saga_id)
        return JSONResponse(
            {"order_id": order.order_id, "saga_id": str(saga_id), "status": "accepted", "status_url": status_url},
            status_code=202,
            headers={"Location": status_url},
        )

    @app.post("/orders/wait")
    async def run_order(order: OrderRequest, runtime: saga_api.Runtime) -> dict[str, typing.Any]:
        """Run the order's saga and report how it ended (202 with the status link if it runs longer)."""
        result = await runtime.run_saga(
            OrderContext.from_request(order), saga_id=order_saga_id(order.order_id), timeout=WAIT_SECONDS
        )
        return {"order_id": order.order_id, **result.to_dict()}

    @app.post("/orders/stream", response_model=None)
    async def stream_order(order: OrderRequest, request: Request) -> StreamingResponse:
        """Run the order's saga, streaming each step as a Server-Sent Event."""
        context = OrderContext.from_request(order)
        return await saga_api.saga_event_stream(request, context, saga_id=order_saga_id(order.order_id))

    return app


def _describe(url: str) -> str:
    if "@" in url:  # hide credentials
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _banner(base: str, storage: str) -> str:
    order = '{"order_id": "A-1", "user_id": "U-1", "items": [{"sku": "book", "quantity": 2}], "amount": 42.5}'
    declined = order.replace("A-1", "A-2").replace("42.5", "12000")
    slow = order.replace("A-1", "A-3").replace("42.5}", '42.5, "ship_delay": 2}')
    waited = order.replace("A-1", "A-4")
    json_header = "-H 'Content-Type: application/json'"
    return f"""
order service on {base} (sagas stored in {storage}); request bodies documented at {base}/docs

  # start an order in the background (202 with its saga id)
  curl -s -X POST {base}/orders {json_header} -d '{order}'
  # over the payment limit: declined, the reservation is released (compensation)
  curl -s -X POST {base}/orders {json_header} -d '{declined}'
  # watch a saga step by step (Server-Sent Events)
  curl -N -X POST {base}/orders/stream {json_header} -d '{slow}'
  # run one and wait for the outcome
  curl -s -X POST {base}/orders/wait {json_header} -d '{waited}'
  # the sagas: list, status, history, Mermaid diagram (use an id printed above), health
  curl -s '{base}/sagas?status=failed'
  curl -s {base}/sagas/<saga_id>
  curl -s {base}/sagas/<saga_id>/history
  curl -s {base}/sagas/<saga_id>/diagram
  curl -s {base}/health
"""


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s [%(correlation_id)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def main(argv: typing.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default 8000)")
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path("var"),
        help="directory of the SQLite file when CQRS_SAGA_STORAGE_URL is not set (default ./var)",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    base_url = f"http://127.0.0.1:{args.port}"
    app = create_app(storage_url(args.data_dir), base_url=base_url)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
