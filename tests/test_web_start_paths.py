"""Every way an integration starts a saga goes through the mediator: its event handlers, hooks and the
request's correlation id apply on each path (issue 11's start-path tests).

Paths: FastAPI's and Flask's run-to-the-end and background start, webhook
deliveries in all three frameworks, Django's atomic start, deferred start
(on commit) and ``saga_worker``. For each, the step's domain event reaches
its handler (under the saga's correlation id), the run hooks see the saga
start (``saga_starting`` stores its trace fields) and finish, and the
stored saga carries the correlation id. Also here: the deferred start's
transaction guarantees and the operator actions behind the app's
authorisation hook.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import typing
import uuid

import di
import fastapi
import flask
import pytest

from cqrs import correlation
from cqrs.config import SagaConfig
from cqrs.saga.storage.enums import SagaStatus
from django_project import notice_sagas
from django_project.notice_sagas import RECORDER, NoticeContext, NoticeSaga
from django_project.testing import _django_configured  # noqa: F401  (the fixture Django apps need)
from web_harness import DjangoServed, FastAPIServed, FlaskServed, Served, django_project

NOTICE_SETTINGS: dict[str, typing.Any] = {
    "SAGAS": ["django_project.notice_sagas.NoticeSaga"],
    "EVENT_MAP": "django_project.notice_sagas.event_map",
    "HOOKS": "django_project.notice_sagas.hooks",
    "LEASE_SECONDS": 5,
}


@pytest.fixture(autouse=True)
def _reset() -> None:
    notice_sagas.reset()


def operator_header(request: typing.Any, action: typing.Any) -> bool:
    return bool(request.headers.get("X-Operator") == "yes")


def config() -> SagaConfig:
    return SagaConfig(
        sagas=[NoticeSaga], container=di.Container(), event_map=notice_sagas.event_map(), hooks=[RECORDER],
    )


@contextlib.contextmanager
def serve(framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> typing.Iterator[Served]:
    """An app with ``/run`` and ``/start`` (a notice per ``?text=``), ``/hooks/notice`` and ``/ops`` actions."""
    if framework == "django":
        with django_project(request, "sqlite", tmp_path, CQRS_SAGA=NOTICE_SETTINGS,
                            ROOT_URLCONF="django_project.notice_urls"):
            yield DjangoServed()
        return
    if framework == "fastapi":
        from cqrs.integrations import fastapi as saga_api

        app = fastapi.FastAPI()
        saga_api.init_app(app, config())
        app.include_router(saga_api.webhook_routes(prefix="/hooks", insecure_unsigned_sources=["notice"]))
        app.include_router(saga_api.operator_routes(prefix="/ops", health=None, authorize=operator_header))

        @app.post("/run")
        async def run(request: fastapi.Request, text: str) -> dict[str, str]:
            return {"saga_id": str((await saga_api.run_saga(request, NoticeContext(text))).saga_id)}

        @app.post("/start")
        async def start(request: fastapi.Request, text: str) -> dict[str, str]:
            return {"saga_id": str(await saga_api.start_saga(request, NoticeSaga, {"text": text}))}

        served: typing.Any = FastAPIServed(app)
    else:
        from cqrs.integrations import flask as saga_flask

        app = flask.Flask(__name__)
        saga_flask.SagaExtension(app, config=config())
        app.register_blueprint(saga_flask.webhook_routes(prefix="/hooks", insecure_unsigned_sources=["notice"]))
        app.register_blueprint(saga_flask.operator_routes(prefix="/ops", health=None, authorize=operator_header))

        @app.post("/run")
        def run() -> dict[str, str]:
            return {"saga_id": str(saga_flask.run_saga(NoticeContext(flask.request.args["text"])).saga_id)}

        @app.post("/start")
        def start() -> dict[str, str]:
            return {"saga_id": str(saga_flask.start_saga(NoticeSaga, {"text": flask.request.args["text"]}))}

        served = FlaskServed(app)
    try:
        yield served
    finally:
        served.close()


def assert_observed(served: Served, saga_id: str, text: str, cid: str, *, kinds: tuple[str, ...]) -> None:
    """The handler ran with the saga's correlation id as the current one (event handlers run in the
    saga's correlation scope, whoever drives the run: a request, a background task or ``saga_worker``)."""
    served.settle()
    assert (text, cid) in notice_sagas.HANDLED, notice_sagas.HANDLED
    seen = RECORDER.of(saga_id)
    assert [kind for kind, _ in seen] == list(kinds), seen
    assert {c for _, c in seen} == {cid}
    (record,) = [r for r in served.stored() if str(r.saga_id) == saga_id]
    assert record.status == SagaStatus.COMPLETED and record.correlation_id == cid
    assert record.trace_context == {"traceparent": f"trace-of-{cid}"}


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_run_and_background_starts_apply_handlers_hooks_and_correlation_ids(
    framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with serve(framework, request, tmp_path) as served:
        ran = served.request("POST", "/run?text=ran", headers={"X-Correlation-ID": "cid-run"}).json()["saga_id"]
        assert_observed(served, ran, "ran", "cid-run", kinds=("starting", "started", "resumed", "finished:completed"))
        started = served.request("POST", "/start?text=bg", headers={"X-Correlation-ID": "cid-bg"}).json()["saga_id"]
        assert_observed(served, started, "bg", "cid-bg",
                        kinds=("starting", "started", "resumed", "finished:completed"))


@pytest.mark.parametrize("framework", ["fastapi", "flask", "django"])
def test_webhook_deliveries_apply_handlers_hooks_and_correlation_ids(
    framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with serve(framework, request, tmp_path) as served:
        reply = served.request(
            "POST", "/hooks/notice", json_body={"text": "hooked"}, headers={"X-Correlation-ID": "cid-hook"}
        )
        assert reply.status == 202, reply.text
        saga_id = reply.json()["sagas"][0]["saga_id"]
        assert_observed(served, saga_id, "hooked", "cid-hook",
                        kinds=("starting", "started", "resumed", "finished:completed"))


def test_django_atomic_deferred_and_worker_starts_apply_handlers_hooks_and_correlation_ids(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with django_project(request, "sqlite", tmp_path, CQRS_SAGA=NOTICE_SETTINGS,
                        ROOT_URLCONF="django_project.notice_urls"):
        from django.core.management import call_command
        from django.db import transaction
        from django.test import override_settings

        from cqrs.integrations import django as sagas

        served = DjangoServed()
        token = correlation.set_correlation_id("cid-atomic")
        try:
            with transaction.atomic():
                atomic = sagas.atomic_saga_start(NoticeSaga, NoticeContext("atomic"))
        finally:
            correlation.reset_correlation_id(token)
        assert_observed(served, str(atomic), "atomic", "cid-atomic",
                        kinds=("starting", "resumed", "finished:completed"))

        with transaction.atomic():
            deferred = sagas.start_saga_on_commit(NoticeContext("deferred"), correlation_id="cid-deferred")
            assert served.stored() == [r for r in served.stored() if r.saga_id != deferred]  # not before the commit
        assert_observed(served, str(deferred), "deferred", "cid-deferred",
                        kinds=("starting", "started", "resumed", "finished:completed"))

        with override_settings(CQRS_SAGA={**NOTICE_SETTINGS, "RUN_ON_COMMIT": False}):
            with transaction.atomic():
                left = sagas.atomic_saga_start(NoticeContext("worker"), correlation_id="cid-worker")
            assert [r.status for r in served.stored() if r.saga_id == left] == [SagaStatus.PENDING]
            call_command("saga_worker", "--once", stdout=io.StringIO())
            assert_observed(served, str(left), "worker", "cid-worker",
                            kinds=("starting", "resumed", "finished:completed"))


def test_django_deferred_start_rollback_starts_nothing_and_commit_exactly_one(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with django_project(request, "sqlite", tmp_path, CQRS_SAGA=NOTICE_SETTINGS,
                        ROOT_URLCONF="django_project.notice_urls"):
        from django.db import transaction

        from cqrs.integrations import django as sagas

        served = DjangoServed()

        class Rollback(Exception):
            pass

        with contextlib.suppress(Rollback), transaction.atomic():
            rolled_back = sagas.start_saga_on_commit(NoticeContext("never"))
            raise Rollback
        with transaction.atomic():
            committed = sagas.start_saga_on_commit(NoticeSaga, {"text": "once"})
            with transaction.atomic():  # a savepoint's commit is not the commit
                sagas.start_saga_on_commit(NoticeContext("inner"))
        served.settle()
        stored = served.stored()
        assert rolled_back not in {r.saga_id for r in stored}
        assert sorted(r.context["text"] for r in stored) == ["inner", "once"]
        assert [r.status for r in stored if r.saga_id == committed] == [SagaStatus.COMPLETED]
        assert sorted(text for text, _ in notice_sagas.HANDLED) == ["inner", "once"]
        with pytest.raises(sagas.Problem, match="NUL"):
            sagas.start_saga_on_commit(NoticeContext("a\x00b"))


@pytest.mark.parametrize("framework", ["fastapi", "flask", "django"])
def test_operator_actions_need_the_apps_authorisation(
    framework: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with serve(framework, request, tmp_path) as served:
        saga_id = uuid.uuid4()

        async def record(storage: typing.Any) -> None:  # stored, leased by this process, not run
            from cqrs.saga.storage.models import NewSaga

            await storage.start_saga(NewSaga(saga_id, "notice", {"text": "stuck"}), "someone-else", 30.0)

        served.storage_call(record)
        ops = {"X-Operator": "yes"}

        def act(action: str, headers: dict[str, str] | None = None, **body: str) -> typing.Any:
            return served.request("POST", f"/ops/{saga_id}/{action}", json_body=body or None, headers=headers)

        for action in ("recover", "park", "reset"):
            refused = act(action)
            assert refused.status == 403 and refused.media_type == "application/problem+json"
        busy = act("recover", ops)
        assert busy.status == 409 and "being run by someone-else" in busy.json()["detail"]
        parked = act("park", ops, reason="looked stuck")
        assert parked.status == 200 and parked.json()["status"] == "parked" and parked.json()["error"] == "looked stuck"
        assert "reset it first" in act("recover", ops).json()["detail"]
        reset = act("reset", ops)
        assert reset.status == 200 and reset.json()["owner"] is None and reset.json()["recovery_attempts"] == 0
        recovering = act("recover", ops)
        assert recovering.status == 202 and recovering.headers["location"] == f"/sagas/{saga_id}"
        served.settle()
        status = served.request("GET", f"/ops/{saga_id}").json()
        assert status["status"] == "completed"
        assert [text for text, _ in notice_sagas.HANDLED] == ["stuck"]
        assert act("park", ops).status == 409  # finished: nothing to park
        assert act("recover", ops, ).status == 409
        assert served.request("POST", f"/ops/{uuid.uuid4()}/reset", headers=ops).status == 404
