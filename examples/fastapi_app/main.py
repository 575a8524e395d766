"""An order service on FastAPI: sagas in the background, live over SSE, with status pages.

    python examples/fastapi_app/main.py [--port 8000] [--data-dir ./var]

Sagas are stored in SQLite (``<data-dir>/orders.sqlite3``) unless
``CQRS_SAGA_STORAGE_URL`` names another storage, for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/orders``. Other
``CQRS_SAGA_*`` variables tune the engine (``CQRS_SAGA_LEASE_SECONDS``,
``CQRS_SAGA_RECOVERY_INTERVAL``, ...). A recovery worker runs in the app, so
sagas interrupted by a crash are finished after a restart.

Endpoints:

- ``POST /orders``: 202 with the saga id; the saga runs in the background.
- ``POST /orders/stream``: runs the saga, streaming its progress as Server-Sent Events.
- ``POST /orders/wait``: runs the saga and answers when it has ended.
- ``GET /sagas/{id}``, ``GET /sagas/{id}/diagram``: status JSON and Mermaid diagram.
- ``GET /health``: 200 when the storage answers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import typing

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sagas import OrderContext, OrderRequest, OrderSaga, build_container

from cqrs.config import SagaConfig
from cqrs.correlation import CorrelationIdFilter
from cqrs.integrations import fastapi as saga_api
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.storage.protocol import SagaStorage

logger = logging.getLogger("orders")

# What the endpoints get from the integration, as FastAPI dependencies.
Order = typing.Annotated[OrderRequest, Depends(saga_api.saga_context(OrderRequest))]
Mediator = typing.Annotated[SagaMediator, Depends(saga_api.get_mediator)]
Storage = typing.Annotated[SagaStorage, Depends(saga_api.get_storage)]

DEFAULT_PORT = 8000


def storage_url(data_dir: pathlib.Path) -> str:
    """``CQRS_SAGA_STORAGE_URL`` if set, else a SQLite file in ``data_dir`` (created if missing)."""
    url = os.environ.get("CQRS_SAGA_STORAGE_URL")
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(data_dir / 'orders.sqlite3').resolve()}"


def _describe(url: str) -> str:
    if "@" in url:  # hide credentials
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def create_app(url: str, *, base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}") -> FastAPI:
    """The order service over the saga storage at ``url``."""
    config = SagaConfig.from_env(storage_url=url, sagas=[OrderSaga], container=build_container())

    @contextlib.asynccontextmanager
    async def announce(app: FastAPI) -> typing.AsyncIterator[None]:
        # Our own lifespan, run inside the saga lifespan: the storage is open here.
        print(_banner(base_url, _describe(url)), flush=True)
        yield
        print("order service: shutting down (running sagas are finished first)", flush=True)

    app = FastAPI(
        title="Order service (cqrs-saga example)",
        lifespan=saga_api.create_lifespan(config, recovery=True, lifespan=announce),
    )
    app.add_middleware(saga_api.SagaContextMiddleware, header_name=config.correlation_header)
    app.include_router(saga_api.saga_router(prefix="/sagas"))

    def links(saga_id: str) -> dict[str, str]:
        return {"status_url": f"/sagas/{saga_id}", "diagram_url": f"/sagas/{saga_id}/diagram"}

    @app.post("/orders", status_code=202)
    async def create_order(request: Request, order: Order) -> JSONResponse:
        """Start the order saga in the background; answers 202 once the saga is stored."""
        saga_id = str(await saga_api.run_saga_background(request, OrderContext.from_request(order)))
        return JSONResponse(
            {"saga_id": saga_id, "status": "accepted", **links(saga_id)},
            status_code=202,
            headers={"Location": f"/sagas/{saga_id}"},
        )

    @app.post("/orders/stream")
    async def stream_order(request: Request, order: Order) -> StreamingResponse:
        """Run the order saga, streaming each step as a Server-Sent Event."""
        return await saga_api.saga_event_stream(request, OrderContext.from_request(order))

    @app.post("/orders/wait")
    async def run_order(
        order: Order,
        mediator: Mediator,
    ) -> dict[str, typing.Any]:
        """Run the order saga within the request and report how it ended."""
        outcome = await mediator.run(OrderContext.from_request(order))
        saga_id = str(outcome.saga_id)
        return {
            "saga_id": saga_id,
            "status": outcome.status.value,
            "steps": {r.step_type.name: r.response.model_dump(mode="json") for r in outcome.results},
            "error": None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
            **links(saga_id),
        }

    @app.get("/health")
    async def health(storage: Storage) -> JSONResponse:
        """200 when the saga storage answers a query, 503 when it does not."""
        try:
            await storage.list_sagas(limit=1)
        except Exception as error:
            logger.warning("health check: storage unavailable: %s", error)
            return JSONResponse({"status": "unavailable", "error": str(error)}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


def _banner(base: str, storage: str) -> str:
    order = '{"order_id": "A-1", "items": ["book", "pen"], "amount": 42.5}'
    declined = '{"order_id": "A-2", "items": ["piano"], "amount": 12000, "fail_payment": true}'
    slow = '{"order_id": "A-3", "items": ["lamp"], "amount": 30, "ship_delay": 2}'
    waited = order.replace("A-1", "A-4")
    json_header = "-H 'Content-Type: application/json'"
    return f"""
order service on {base} (sagas stored in {storage})

  # start an order in the background (202 with its saga id)
  curl -s -X POST {base}/orders {json_header} -d '{order}'
  # a declined payment: the reservation is released (compensation)
  curl -s -X POST {base}/orders {json_header} -d '{declined}'
  # watch a saga step by step (Server-Sent Events)
  curl -N -X POST {base}/orders/stream {json_header} -d '{slow}'
  # run one and wait for the outcome
  curl -s -X POST {base}/orders/wait {json_header} -d '{waited}'
  # status and Mermaid diagram of a saga (use an id printed above)
  curl -s {base}/sagas/<saga_id>
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
