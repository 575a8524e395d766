"""One synchronous client over an app of each framework, for the suites shared by FastAPI, Flask and Django.

`serve_example(framework, ...)` serves that framework's example order
service (``examples/<framework>_app``, loaded as users run it);
`serve_webhooks(framework, ...)` an app with the webhook routes over the
test sagas of `django_project.webhook_sagas`. Either yields a `Served`:
``request(method, path, ...)`` gives a `Reply`; ``settle()`` waits for the
app's background runs; ``stored()`` lists what its storage holds.

FastAPI apps run their lifespan and an httpx client on an event loop of
their own in a thread (so tests stay synchronous, as Flask's and Django's
clients are); Flask and Django run on the integrations' shared saga loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import pathlib
import sys
import types
import typing

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FRAMEWORKS = ["fastapi", "flask", "django"]
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> typing.Any:
        return json.loads(self.body)

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


class Served(typing.Protocol):
    framework: str

    def request(
        self, method: str, path: str, *, json_body: typing.Any = None, content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply: ...

    def settle(self, timeout: float = 30) -> None: ...

    def stored(self, **filters: typing.Any) -> list[typing.Any]: ...

    def storage_call(self, make: typing.Callable[[typing.Any], typing.Awaitable[typing.Any]]) -> typing.Any: ...


def _body(json_body: typing.Any, content: bytes | None) -> tuple[bytes | None, dict[str, str]]:
    if json_body is not None:
        return json.dumps(json_body).encode(), {"content-type": "application/json"}
    return content, {}


def load_example(name: str) -> types.ModuleType:
    """``examples/<name>/main.py`` as a module of its own (each example has its own ``main`` and ``sagas``)."""
    folder = str(EXAMPLES / name)
    for module in ("main", "sagas"):
        sys.modules.pop(module, None)
    sys.path.insert(0, folder)
    try:
        main = importlib.import_module("main")
        # Contexts' type adapters resolve their annotations in their module: build them while it is
        # the ``sagas`` module, before another example's takes the name.
        from cqrs.saga import _serialization

        for value in vars(sys.modules["sagas"]).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == "sagas":
                _serialization._adapter(value)
        return main
    finally:
        sys.path.remove(folder)
        for module in ("main", "sagas"):
            sys.modules.pop(module, None)


# -- FastAPI ------------------------------------------------------------------------------------------


class FastAPIServed:
    framework = "fastapi"

    def __init__(self, app: typing.Any) -> None:
        import httpx

        from cqrs.integrations._loop import LoopThread

        self.app = app
        self.loop = LoopThread("fastapi-test-app")
        self._lifespan = app.router.lifespan_context(app)
        self.loop.run(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")

    @property
    def runtime(self) -> typing.Any:
        return self.app.state.saga

    def request(
        self, method: str, path: str, *, json_body: typing.Any = None, content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body, extra = _body(json_body, content)
        response = self.loop.run(self.client.request(method, path, content=body, headers={**extra, **(headers or {})}))
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def settle(self, timeout: float = 30) -> None:
        assert self.loop.run(self.runtime.wait_idle(timeout))

    def storage_call(self, make: typing.Callable[[typing.Any], typing.Awaitable[typing.Any]]) -> typing.Any:
        async def go() -> typing.Any:
            return await make(self.runtime.storage)

        return self.loop.run(go())

    def stored(self, **filters: typing.Any) -> list[typing.Any]:
        return typing.cast(list[typing.Any], self.storage_call(lambda s: s.list_sagas(limit=1000, **filters)))

    def close(self) -> None:
        try:
            self.loop.run(self.client.aclose())
            self.loop.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.stop()


# -- Flask ------------------------------------------------------------------------------------------------


class FlaskServed:
    framework = "flask"

    def __init__(self, app: typing.Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.extension = app.extensions["cqrs_saga"]

    @property
    def runtime(self) -> typing.Any:
        return self.extension.runtime(self.app)

    def request(
        self, method: str, path: str, *, json_body: typing.Any = None, content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body, extra = _body(json_body, content)
        response = self.client.open(path, method=method, data=body, headers={**extra, **(headers or {})})
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.get_data())

    def settle(self, timeout: float = 30) -> None:
        assert self.extension.wait_for_sagas(timeout, app=self.app)

    def storage_call(self, make: typing.Callable[[typing.Any], typing.Awaitable[typing.Any]]) -> typing.Any:
        from cqrs.integrations._loop import block

        async def go() -> typing.Any:
            return await make((await self.runtime.open()).storage)

        return block(go())

    def stored(self, **filters: typing.Any) -> list[typing.Any]:
        return typing.cast(list[typing.Any], self.storage_call(lambda s: s.list_sagas(limit=1000, **filters)))

    def close(self) -> None:
        self.extension.close(self.app)


# -- Django -----------------------------------------------------------------------------------------------


class DjangoServed:
    framework = "django"

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client()

    def request(
        self, method: str, path: str, *, json_body: typing.Any = None, content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body, extra = _body(json_body, content)
        all_headers = {**extra, **(headers or {})}
        content_type = all_headers.pop("content-type", "application/octet-stream")
        response = self.client.generic(method, path, body or b"", content_type=content_type, headers=all_headers)
        data = b"".join(response.streaming_content) if response.streaming else response.content
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, data)

    def settle(self, timeout: float = 30) -> None:
        from cqrs.integrations.django import wait_for_sagas

        assert wait_for_sagas(timeout)

    def storage_call(self, make: typing.Callable[[typing.Any], typing.Awaitable[typing.Any]]) -> typing.Any:
        from django_project.testing import on_saga_loop

        return on_saga_loop(make)

    def stored(self, **filters: typing.Any) -> list[typing.Any]:
        return typing.cast(list[typing.Any], self.storage_call(lambda s: s.list_sagas(limit=1000, **filters)))


@contextlib.contextmanager
def django_project(
    request: pytest.FixtureRequest, backend: str, tmp_path: pathlib.Path, **overrides: typing.Any
) -> typing.Iterator[None]:
    """The test project on a fresh database (``sqlite``, ``postgres``), migrated, with ``overrides`` of settings."""
    request.getfixturevalue("django_configured")
    from config.settings import database_from_url
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    from cqrs.integrations import django as saga_django
    from django_project.testing import point_django_at

    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'app.sqlite3'}"
    url = url.replace("postgresql+asyncpg://", "postgresql://")
    blocker = request.getfixturevalue("django_db_blocker")
    with contextlib.ExitStack() as stack:
        if blocker is not None:
            stack.enter_context(blocker.unblock())
        point_django_at(database_from_url(url))
        saga_django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        if overrides:
            stack.enter_context(override_settings(**overrides))  # CQRS_SAGA* are re-read at once
        try:
            yield
        finally:
            saga_django.shutdown(timeout=10)
            connections.close_all()


def storage_url_for(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{backend}_url"))


# -- the example order service ------------------------------------------------------------------------


@contextlib.contextmanager
def serve_example(
    framework: str, request: pytest.FixtureRequest, backend: str, tmp_path: pathlib.Path
) -> typing.Iterator[Served]:
    """The framework's example order service on ``backend`` (``sqlite`` or ``postgres``)."""
    if framework == "django":
        with django_project(request, backend, tmp_path):
            yield DjangoServed()
        return
    url = storage_url_for(request, backend)
    main = load_example(f"{framework}_app")
    if framework == "fastapi":
        served: typing.Any = FastAPIServed(main.create_app(url))
    else:
        served = FlaskServed(main.create_app(url))
    try:
        yield served
    finally:
        served.close()


# -- webhooks ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_webhooks(
    framework: str, request: pytest.FixtureRequest, backend: str, tmp_path: pathlib.Path
) -> typing.Iterator[Served]:
    """``/webhooks/<source>`` (signed with `webhook_sagas.VERIFIER`) and ``/open-hooks/<source>`` (the
    payment saga only, ``payment_due`` accepted unsigned) over the webhook test sagas, body limit 4096."""
    from django_project import webhook_sagas

    if framework == "django":
        settings = {
            "CQRS_SAGA": {
                "SAGAS": webhook_sagas.SAGA_PATHS, "COMPENSATION_RETRY_DELAY": 0.0, "LEASE_SECONDS": 5,
                **({"STORAGE_URL": "memory://"} if backend == "memory" else {}),
            },
            "CQRS_SAGA_WEBHOOKS": {"SECRET": webhook_sagas.SECRET, "MAX_BODY_BYTES": 4096},
            "ROOT_URLCONF": "django_project.webhook_urls",
        }
        with django_project(request, "sqlite" if backend == "memory" else backend, tmp_path, **settings):
            yield DjangoServed()
        return
    import di

    from cqrs.config import SagaConfig

    config = SagaConfig(
        storage_url=storage_url_for(request, backend), sagas=webhook_sagas.SAGAS, container=di.Container(),
        compensation_retry_delay=0.0, max_body_bytes=4096,
    )
    open_hooks = {"sagas": [webhook_sagas.WebhookPaymentSaga], "insecure_unsigned_sources": ["payment_due"]}
    if framework == "fastapi":
        import fastapi

        from cqrs.integrations import fastapi as saga_api

        app = fastapi.FastAPI()
        saga_api.init_app(app, config)
        app.include_router(saga_api.webhook_routes(prefix="/webhooks", verifier=webhook_sagas.VERIFIER))
        app.include_router(saga_api.webhook_routes(prefix="/open-hooks", **open_hooks))
        served: typing.Any = FastAPIServed(app)
    else:
        import flask

        from cqrs.integrations import flask as saga_flask

        app = flask.Flask(__name__)
        saga_flask.SagaExtension(app, config=config)
        app.register_blueprint(saga_flask.webhook_routes(prefix="/webhooks", verifier=webhook_sagas.VERIFIER))
        app.register_blueprint(saga_flask.webhook_routes(prefix="/open-hooks", name="open", **open_hooks))
        served = FlaskServed(app)
    try:
        yield served
    finally:
        served.close()
