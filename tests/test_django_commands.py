"""The management commands: saga_worker, saga_list and saga_check, their output and exit codes."""

from __future__ import annotations

import datetime
import io
import itertools
import re
import subprocess
import time
import typing
import uuid

import pytest

from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import NewSaga
from django_project.testing import (
    ROOT,
    Database,
    _django_configured,  # noqa: F401
    _saga_db,  # noqa: F401
    age_saga,
    on_saga_loop,
    project_command,
    record,
    stop,
    wait_for,
)


def call(*args: str) -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command(*args, stdout=out, no_color=True)
    return out.getvalue()


def run_project(database: Database, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        project_command(*args), cwd=ROOT, env=database.env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def pending_only(settings: typing.Any) -> None:
    """Sagas started with atomic_saga_start wait for a worker."""
    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "RUN_ON_COMMIT": False}


def pending(context: typing.Any) -> uuid.UUID:
    from django.db import transaction

    from cqrs.integrations.django import atomic_saga_start

    with transaction.atomic():
        return atomic_saga_start(context)


def abandoned_running_saga(lease_seconds: float = 0.0) -> uuid.UUID:
    """A saga whose runner died mid-run: ``running``, its lease already expired, no progress since."""
    from cqrs.saga._serialization import dump_context
    from django_project.sagas import EchoContext, EchoSaga

    saga_id = uuid.uuid4()
    new = NewSaga(saga_id=saga_id, name=EchoSaga.name, context=dump_context(EchoContext(text="lost")))
    assert on_saga_loop(lambda storage: storage.start_saga(new, "gone-host:1:dead", lease_seconds)) is not None
    return saga_id


# -- saga_list --------------------------------------------------------------------------------------


def column(lines: list[str], header: str) -> list[str]:
    """The cells of one column, cut at the header's position (the table must be aligned)."""
    start = lines[0].index(header)
    return [line[start:].split("  ")[0].strip() for line in lines[2:]]


def test_saga_list_prints_an_aligned_table_and_filters(saga_db: Database, pending_only: None) -> None:
    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext, SlowContext

    done = run_saga(EchoContext(text="a"), correlation_id="corr-a").saga_id
    failed = run_saga(EchoContext(text="b", fail=True)).saga_id
    waiting = pending(SlowContext(seconds=0))

    lines = call("saga_list").splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "AGE", "UPDATED", "ATTEMPTS", "CORRELATION", "ID", "ERROR"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[-1] == "3 saga(s)"
    table = lines[:-1]
    assert column(table, "ID") == [str(done), str(failed), str(waiting)]
    assert column(table, "NAME") == ["EchoSaga", "EchoSaga", "SlowSaga"]
    assert column(table, "STATUS") == ["completed", "failed", "pending"]
    assert column(table, "CORRELATION ID")[0] == "corr-a"
    assert column(table, "ERROR")[1].startswith("ValueError: refusing 'b'")

    lines = call("saga_list", "--status", "pending").splitlines()
    assert column(lines[:-1], "ID") == [str(waiting)] and lines[-1] == "1 saga(s)"
    lines = call("saga_list", "--name", "EchoSaga", "--limit", "1").splitlines()
    assert column(lines[:-1], "ID") == [str(done)]
    assert lines[-1] == "1 saga(s) (the --limit; there may be more)"
    assert call("saga_list", "--older-than", "2h") == "No sagas match.\n"
    age_saga(done, 3 * 3600)
    lines = call("saga_list", "--older-than", "2h", "--status", "completed").splitlines()
    assert column(lines[:-1], "ID") == [str(done)]


def test_saga_list_as_a_command(saga_db: Database) -> None:
    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext

    saga_id = run_saga(EchoContext(text="cli")).saga_id
    listed = run_project(saga_db, "saga_list", "--status", "completed", "--older-than", "0s")
    assert listed.returncode == 0, listed.stderr
    assert str(saga_id) in listed.stdout and "1 saga(s)" in listed.stdout

    bad = run_project(saga_db, "saga_list", "--older-than", "5 parsecs")
    assert bad.returncode == 2
    assert "'5 parsecs' is not a duration like 30s, 5m, 2h or 1d" in bad.stderr
    bad = run_project(saga_db, "saga_list", "--status", "sleeping")
    assert bad.returncode == 2 and "invalid choice: 'sleeping'" in bad.stderr


# -- saga_check -------------------------------------------------------------------------------------


def check_lines(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        word, _, rest = line.partition("  ")
        if word.strip() in ("OK", "FAIL", "SKIP"):
            name, _, _ = rest.strip().partition(":")
            found[name] = word.strip()
    return found


def test_saga_check_healthy_exits_zero(saga_db: Database) -> None:
    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext

    run_saga(EchoContext(text="fine"))
    checked = run_project(saga_db, "saga_check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_lines(checked.stdout) == {
        "configuration": "OK", "database": "OK", "tables": "OK", "stuck sagas": "OK", "needs attention": "OK",
    }
    assert checked.stdout.rstrip().endswith("Healthy.")
    assert "sagas: order, EchoSaga, SlowSaga, StubbornSaga" in checked.stdout


def test_saga_check_fails_on_a_stuck_saga(saga_db: Database) -> None:
    saga_id = abandoned_running_saga()
    age_saga(saga_id, 120)
    checked = run_project(saga_db, "saga_check", "--stuck-after", "1m")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert check_lines(checked.stdout)["stuck sagas"] == "FAIL"
    # Backdated by two minutes: reported in whole minutes.
    assert re.search(rf"{saga_id} \(EchoSaga, running, no progress for 2m\)", checked.stdout), checked.stdout
    assert "Unhealthy: 1 check(s) failed (stuck sagas)" in checked.stderr

    # Within the default threshold (15m) it is not stuck yet.
    assert run_project(saga_db, "saga_check").returncode == 0


def test_saga_check_fails_on_compensation_failed_and_parked(saga_db: Database) -> None:
    from django.core.management.base import CommandError

    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext, StubbornContext

    outcome = run_saga(StubbornContext(label="x"))
    assert outcome.status == SagaStatus.COMPENSATION_FAILED
    with pytest.raises(CommandError, match=r"1 check\(s\) failed \(needs attention\)"):
        call("saga_check")
    parked = run_saga(EchoContext(text="p", fail=True)).saga_id
    on_saga_loop(lambda storage: storage.park_saga(parked, "by an operator"))
    out = io.StringIO()
    from django.core.management import call_command

    with pytest.raises(CommandError):
        call_command("saga_check", stdout=out, no_color=True)
    assert f"2 compensation_failed or parked: {outcome.saga_id} (StubbornSaga, compensation_failed" in out.getvalue()
    assert f"{parked} (EchoSaga, parked" in out.getvalue()


def test_saga_check_reports_missing_tables_unreachable_database_and_bad_config(
    saga_db: Database, settings: typing.Any, tmp_path: typing.Any
) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    def checked() -> tuple[dict[str, str], str]:
        out = io.StringIO()
        with pytest.raises(CommandError):
            call_command("saga_check", stdout=out, no_color=True)
        return check_lines(out.getvalue()), out.getvalue()

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "STORAGE_URL": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"}
    lines, output = checked()
    assert lines == {
        "configuration": "OK", "database": "OK", "tables": "FAIL", "stuck sagas": "SKIP", "needs attention": "SKIP",
    }
    assert "missing cqrs_saga_schema, saga_executions, saga_log, saga_outbox: run `python manage.py migrate`" in output

    settings.CQRS_SAGA = {**settings.CQRS_SAGA, "STORAGE_URL": "postgresql+asyncpg://nobody:secret@127.0.0.1:9/none"}
    lines, output = checked()
    assert lines["database"] == "FAIL" and lines["tables"] == "SKIP"
    assert "secret" not in output and "nobody:***@127.0.0.1:9" in output

    settings.CQRS_SAGA = {"SAGAS": ["no.such.Saga"]}
    lines, output = checked()
    assert lines == {
        "configuration": "FAIL", "database": "SKIP", "tables": "SKIP", "stuck sagas": "SKIP", "needs attention": "SKIP",
    }
    assert "'no.such.Saga', which cannot be imported" in output


# -- saga_worker ------------------------------------------------------------------------------------


def test_saga_worker_once_runs_pending_and_abandoned_sagas(saga_db: Database, pending_only: None) -> None:
    from django_project.sagas import EchoContext

    first = pending(EchoContext(text="one"))
    second = pending(EchoContext(text="two", fail=True))
    abandoned = abandoned_running_saga()
    output = call("saga_worker", "--once")
    assert output.strip() == "saga_worker: claimed 3 saga(s): completed=2, failed=1"
    assert record(first).status == SagaStatus.COMPLETED
    assert record(second).status == SagaStatus.FAILED
    assert record(abandoned).context["echoed"] == "LOST"
    assert call("saga_worker", "--once").strip() == "saga_worker: claimed 0 saga(s): nothing run"


def test_saga_worker_concurrency(saga_db: Database, pending_only: None) -> None:
    from django_project.sagas import SlowContext

    def naps(ids: list[uuid.UUID]) -> list[tuple[float, float]]:
        stored = [record(saga_id) for saga_id in ids]
        assert all(saga.status == SagaStatus.COMPLETED for saga in stored)
        return sorted((saga.context["started"], saga.context["finished"]) for saga in stored)

    ids = [pending(SlowContext(seconds=0.5)) for _ in range(4)]
    call("saga_worker", "--once", "--concurrency", "4")
    intervals = naps(ids)
    # Side by side: every nap began before any ended.
    assert max(start for start, _ in intervals) < min(end for _, end in intervals), intervals

    ids = [pending(SlowContext(seconds=0.2)) for _ in range(3)]
    call("saga_worker", "--once", "--concurrency", "1")
    intervals = naps(ids)
    # One at a time: each nap began after the one before it ended.
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(intervals)), intervals


def test_saga_worker_rejects_bad_options(saga_db: Database) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--concurrency must be at least 1"):
        call("saga_worker", "--concurrency", "0")
    with pytest.raises(CommandError, match="--poll-interval must not be negative"):
        call("saga_worker", "--poll-interval", "-1")


def _claimed(saga_id: uuid.UUID) -> bool:
    stored = record(saga_id)
    return stored.owner is not None and stored.status == SagaStatus.RUNNING


def worker_claiming(saga_db: Database, saga_id: uuid.UUID, *, shutdown_grace: str) -> subprocess.Popen[str]:
    """``saga_worker`` in a subprocess, once it has claimed ``saga_id``."""
    worker = subprocess.Popen(
        project_command("saga_worker", "--poll-interval", "0.2", "--shutdown-grace", shutdown_grace),
        cwd=ROOT, env=saga_db.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: _claimed(saga_id), timeout=60, what="the worker to claim the saga")
    except BaseException:
        worker.kill()
        worker.communicate()
        raise
    return worker


def test_saga_worker_finishes_in_flight_sagas_on_sigterm(saga_db: Database, pending_only: None) -> None:
    from django_project.sagas import EchoContext, SlowContext

    slow = pending(SlowContext(seconds=2.0))
    worker = worker_claiming(saga_db, slow, shutdown_grace="20")
    try:
        later = pending(EchoContext(text="after the signal"))
        assert stop(worker) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    out, err = worker.communicate()
    assert "saga_worker: running order, EchoSaga, SlowSaga, StubbornSaga" in out, err
    assert "SIGTERM: no more claims; finishing in-flight sagas" in out
    assert out.rstrip().endswith("saga_worker: stopped: completed=1")
    assert record(slow).status == SagaStatus.COMPLETED
    # Claimed nothing after the signal.
    assert record(later).status == SagaStatus.PENDING


def test_saga_worker_releases_what_it_cannot_finish_within_the_grace(saga_db: Database, pending_only: None) -> None:
    from django_project.sagas import SlowContext

    slow = pending(SlowContext(seconds=60.0))
    worker = worker_claiming(saga_db, slow, shutdown_grace="0.5")
    try:
        started = time.monotonic()
        assert stop(worker) == 0
        assert time.monotonic() - started < 20
    finally:
        if worker.poll() is None:
            worker.kill()
    worker.communicate()
    stored = record(slow)
    assert stored.status == SagaStatus.RUNNING  # not done, but free for the next worker
    assert stored.owner is None
    assert stored.lease_expires_at is None or stored.lease_expires_at <= datetime.datetime.now(datetime.timezone.utc)
