"""The ``cqrs-saga`` command line, run as a real process (``python -m cqrs``) against SQLite and PostgreSQL.

Includes a runner SIGKILLed mid-step whose saga ``cqrs-saga worker`` then finishes, a worker stopped by
SIGTERM, and every user error's exit code and one-line message (never a traceback). The installed console
script itself is run once (tests/test_cli_install.py).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import typing
import uuid

import di
import pytest
import sqlalchemy as sa
from tests import ops_sagas
from tests.ops_sagas import ShopContext
from tests.schema_history import first_schema, python_cqrs_tables

from cqrs.cli import ExitCode
from cqrs.config import open_storage
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.sqlalchemy import SCHEMA_VERSION, SqlAlchemySagaStorage, saga_executions

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = "tests.ops_sagas:sagas"

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def env(**extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith(("CQRS_SAGA_", "CQRS_TEST_"))}
    values["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), values.get("PYTHONPATH", "")])
    values["COLUMNS"] = "200"
    values.update(extra)
    return values


def cli(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "cqrs", *args], cwd=ROOT, env=env(**(extra_env or {})),
        capture_output=True, text=True, timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(autouse=True)
def _clean_switches() -> typing.Iterator[None]:
    yield
    ops_sagas.BROKEN.clear()
    ops_sagas.BROKEN_COMPENSATIONS.clear()


async def seeded(url: str, *kinds: str) -> dict[str, uuid.UUID]:
    """Sagas stored at ``url``: ``completed``, ``compensation_failed`` (reserve's compensation broke), ``failed_first``
    (its first step failed, nothing compensated)."""
    storage = await open_storage(url)
    mediator = SagaMediator(ops_sagas.saga_map, di.Container(), storage=storage)
    ids: dict[str, uuid.UUID] = {}
    try:
        for kind in kinds:
            ops_sagas.BROKEN.clear()
            ops_sagas.BROKEN_COMPENSATIONS.clear()
            if kind == "compensation_failed":
                ops_sagas.BROKEN.add("ship")
                ops_sagas.BROKEN_COMPENSATIONS.add("reserve")
            elif kind == "failed_first":
                ops_sagas.BROKEN.add("reserve")
            outcome = await mediator.run(ShopContext(order_id=kind), correlation_id=f"corr-{kind}")
            ids[kind] = outcome.saga_id
    finally:
        await storage.close()
    return ids


async def status_of(url: str, saga_id: uuid.UUID) -> SagaStatus:
    storage = await open_storage(url, create_tables=False)
    try:
        record = await storage.get_saga(saga_id)
        assert record is not None
        return record.status
    finally:
        await storage.close()


async def test_list_and_show(url: str) -> None:
    ids = await seeded(url, "completed", "compensation_failed")
    listed = cli("list", "--url", url, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["saga_id"], r["status"]) for r in rows] == [
        (str(ids["completed"]), "completed"), (str(ids["compensation_failed"]), "compensation_failed"),
    ]
    assert rows[0]["lease_live"] is False and rows[0]["owner"] is None and rows[0]["context"]["order_id"] == "completed"
    only = cli("list", "--url", url, "--status", "compensation_failed", "--correlation-id", "corr-compensation_failed")
    assert only.returncode == 0 and str(ids["compensation_failed"]) in only.stdout
    assert str(ids["completed"]) not in only.stdout

    shown = cli("show", str(ids["compensation_failed"]), "--url", url)
    assert shown.returncode == 0, shown.stderr
    for text in ("compensation_failed", "owner", "lease", "none (epoch", "recovery attempts", "context",
                 '"order_id": "compensation_failed"', "StepFailed: ship is broken",
                 "run:          reserve [completed] -> charge [completed] -> ship [failed]",
                 "compensation: charge [compensated] -> reserve [compensation failed]"):
        assert text in shown.stdout, (text, shown.stdout)
    drawn = cli("show", str(ids["completed"]), "--url", url, "--app", APP, "--mermaid")
    assert drawn.returncode == 0 and "flowchart LR" in drawn.stdout and "completed" in drawn.stdout
    as_json = json.loads(cli("show", str(ids["completed"]), "--url", url, "--json").stdout)
    assert [h["step"] for h in as_json["history"]] == ["reserve", "charge", "ship"]


async def test_the_environment_names_the_storage(sqlite_url: str) -> None:
    ids = await seeded(sqlite_url, "completed")
    listed = cli("list", "--json", extra_env={"CQRS_SAGA_STORAGE_URL": sqlite_url})
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["saga_id"] == str(ids["completed"])


async def test_operator_actions(url: str) -> None:
    ids = await seeded(url, "compensation_failed", "failed_first")
    broken = {"CQRS_TEST_BROKEN_COMPENSATIONS": "reserve"}
    retried = cli("retry", str(ids["compensation_failed"]), "--url", url, "--app", APP, extra_env=broken)
    assert retried.returncode == 0, retried.stderr
    assert "is compensation_failed" in retried.stdout  # ran, and reserve's compensation failed again
    skipped = cli("skip", str(ids["compensation_failed"]), "reserve", "--url", url, "--note", "nothing reserved",
                  "--actor", "bob")
    assert skipped.returncode == 0, skipped.stderr
    assert "it was the last one outstanding" in skipped.stdout and "is failed" in skipped.stdout
    history = cli("show", str(ids["compensation_failed"]), "--url", url, "--json")
    notes = [h["details"] for h in json.loads(history.stdout)["history"] if h["details"]]
    assert "retry by " in " ".join(notes) and "skipped by bob: nothing reserved" in notes

    rerun = cli("recover", str(ids["failed_first"]), "--url", url, "--app", APP, "--from-step", "reserve",
                "--note", "inventory fixed")
    assert rerun.returncode == 0, rerun.stderr
    assert "ran and is completed" in rerun.stdout
    assert await status_of(url, ids["failed_first"]) == SagaStatus.COMPLETED


async def test_user_errors_exit_codes_and_messages(sqlite_url: str, tmp_path: pathlib.Path) -> None:
    """Every user error once (on SQLite: the messages do not depend on the database, except reaching it)."""
    url = sqlite_url
    ids = await seeded(url, "completed", "compensation_failed")
    done, stuck = str(ids["completed"]), str(ids["compensation_failed"])
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    cases: list[tuple[list[str], int, str]] = [
        (["show", str(uuid.uuid4()), "--url", url], ExitCode.NOT_FOUND, "No saga with id"),
        (["show", "not-a-uuid", "--url", url], ExitCode.USAGE, "Invalid value for 'ID'"),
        (["list"], ExitCode.USAGE, "no storage given: pass --url or set CQRS_SAGA_STORAGE_URL"),
        (["list", "--url", "oracle://db"], ExitCode.USAGE, "Unsupported saga storage URL"),
        (["list", "--url", "memory://"], ExitCode.USAGE, "memory:// holds nothing"),
        (["list", "--url", url, "--older-than", "soon"], ExitCode.USAGE, "'soon' is not a duration"),
        (["list", "--url", url, "--status", "lost"], ExitCode.USAGE, "Invalid value for '--status'"),
        (["list", "--url", empty], ExitCode.STORAGE, "cannot use the database"),
        (["list", "--url", "postgresql://nobody@127.0.0.1:9/none"], ExitCode.STORAGE, "cannot use the database"),
        (["worker", "--url", url, "--app", "no_such_module:x", "--once"], ExitCode.USAGE, "cannot import"),
        (["worker", "--url", url, "--app", "tests.ops_sagas:not_sagas", "--once"], ExitCode.USAGE,
         "not saga definitions"),
        (["worker", "--url", url, "--app", "tests.ops_sagas", "--once"], ExitCode.USAGE, "expected module:object"),
        (["worker", "--url", url], ExitCode.USAGE, "Missing option '--app'"),
        (["recover", done, "--url", url, "--app", APP], ExitCode.REFUSED, "it is completed"),
        (["recover", done, "--url", url, "--app", APP, "--from-step", "ship"], ExitCode.REFUSED,
         "only a failed or parked saga"),
        (["park", done, "--url", url], ExitCode.REFUSED, "it is completed already"),
        (["reset", done, "--url", url], ExitCode.REFUSED, "there is nothing to resume"),
        (["resolve", stuck, "--url", url], ExitCode.REFUSED, "a note is required"),
        (["skip", stuck, "--url", url, "--note", "x"], ExitCode.USAGE, "give the STEP"),
        (["skip", stuck, "ship", "--url", url, "--note", "x"], ExitCode.REFUSED, "never completed"),
        (["retry", done, "--url", url], ExitCode.REFUSED, "compensation failed or stopped"),
        (["purge", "--url", url, "--older-than", "1d", "--status", "running"], ExitCode.USAGE,
         "deletes finished sagas"),
        (["diagram", "tests.ops_sagas:ShopContext"], ExitCode.USAGE, "not a Saga class"),
        (["diagram", "tests.ops_sagas:ShopSaga", "--kind", "pie"], ExitCode.USAGE, "use sequence, state"),
        (["worker", "--url", url, "--app", APP, "--log-level", "LOUD"], ExitCode.USAGE, "--log-level"),
    ]
    for args, code, message in cases:
        result = cli(*args)
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    # The database's own wording for the missing-tables case, plus what to do.
    assert "cqrs-saga db create" in cli("list", "--url", empty).stderr


async def test_purge_deletes_finished_sagas_with_a_progress_bar(url: str) -> None:
    ids = await seeded(url, "completed", "completed_too", "compensation_failed")
    counted = cli("purge", "--url", url, "--older-than", "0s", "--dry-run")
    assert counted.returncode == 0 and "2 saga(s) would be purged" in counted.stdout
    purged = cli("purge", "--url", url, "--older-than", "0s", "--batch", "1")
    assert purged.returncode == 0, purged.stderr
    assert "2 saga(s) purged" in purged.stdout and "purging" in purged.stderr and "2/2" in purged.stderr
    listed = json.loads(cli("list", "--url", url, "--json").stdout)
    assert [r["saga_id"] for r in listed] == [str(ids["compensation_failed"])]


async def test_watch_exits_with_the_saga_outcome(url: str) -> None:
    ids = await seeded(url, "completed", "compensation_failed")
    done = cli("watch", str(ids["completed"]), "--url", url)
    assert done.returncode == ExitCode.OK and "saga " in done.stderr and "is completed" in done.stderr
    assert "reserve [completed] -> charge [completed] -> ship [completed]" in done.stdout
    stuck = cli("watch", str(ids["compensation_failed"]), "--url", url)
    assert stuck.returncode == ExitCode.NO and "is compensation_failed" in stuck.stderr


async def test_diagram_prints_mermaid() -> None:
    for kind, head in [("sequence", "sequenceDiagram"), ("state", "stateDiagram-v2"), ("class", "classDiagram"),
                       ("flow", "flowchart LR")]:
        drawn = cli("diagram", "tests.ops_sagas:ShopSaga", "--kind", kind)
        assert drawn.returncode == 0 and drawn.stdout.startswith(head), drawn.stderr


async def test_db_commands(url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        checked = cli("db", "check", "--url", url)
        assert checked.returncode == ExitCode.NO and "no saga tables" in checked.stdout
        async with storage.engine.begin() as conn:
            await conn.run_sync(first_schema)
        old = cli("db", "check", "--url", url)
        assert old.returncode == ExitCode.NO and "schema version 1" in old.stdout and "db upgrade" in old.stdout
        refused = cli("db", "create", "--url", url)
        assert refused.returncode == ExitCode.STORAGE and "from an earlier cqrs-saga" in refused.stderr
        upgraded = cli("db", "upgrade", "--url", url)
        assert upgraded.returncode == 0
        assert f"upgraded: schema version 1 -> schema version {SCHEMA_VERSION}" in upgraded.stdout
        assert cli("db", "check", "--url", url).returncode == 0
        assert cli("db", "create", "--url", url).returncode == 0
    finally:
        await storage.close()


async def test_db_create_refuses_python_cqrs_tables(url: str) -> None:
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        async with storage.engine.begin() as conn:
            await conn.run_sync(python_cqrs_tables)
        refused = cli("db", "create", "--url", url)
        assert refused.returncode == ExitCode.STORAGE
        assert "python-cqrs's saga_executions, with its saga_logs" in refused.stderr
        assert "Nothing was written" in refused.stderr
        checked = cli("db", "check", "--url", url)
        assert checked.returncode == ExitCode.STORAGE and "not cqrs-saga's" in checked.stdout
    finally:
        await storage.close()


def start_runner(url: str, order: str, ledger: pathlib.Path) -> subprocess.Popen[str]:
    """A runner process holding inside ``charge`` (it has printed ``HOLDING``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ops_runner", url, order], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        env=env(CQRS_TEST_HOLD="charge", CQRS_TEST_LEDGER=str(ledger)),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"HOLDING {order}", line
    return proc


async def kill_and_expire(proc: subprocess.Popen[str], url: str) -> uuid.UUID:
    """SIGKILL the runner, then backdate its lease (as time passing would) so recovery may take the saga."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert proc.stdout is not None
    proc.stdout.close()
    storage = SqlAlchemySagaStorage.from_url(url)
    try:
        past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        async with storage.engine.begin() as conn:
            await conn.execute(sa.update(saga_executions).values(lease_expires_at=past))
        (record,) = await storage.list_sagas()
        assert record.status == SagaStatus.RUNNING and record.owner is not None
        return record.saga_id
    finally:
        await storage.close()


def ledger_calls(ledger: pathlib.Path) -> list[str]:
    return ledger.read_text().splitlines()


async def test_a_killed_runner_s_saga_is_finished_by_the_worker(url: str, tmp_path: pathlib.Path) -> None:
    ledger = tmp_path / "ledger"
    proc = start_runner(url, "crash", ledger)
    saga_id = await kill_and_expire(proc, url)
    worked = cli("worker", "--url", url, "--app", APP, "--once", extra_env={"CQRS_TEST_LEDGER": str(ledger)})
    assert worked.returncode == 0, worked.stderr
    assert f"picked up saga {saga_id} (ShopSaga, running)" in worked.stderr
    assert f"saga {saga_id} (ShopSaga) ended completed" in worked.stderr
    assert "INFO" in worked.stderr and "cqrs.cli.worker" in worked.stderr
    assert await status_of(url, saga_id) == SagaStatus.COMPLETED
    # reserve once; charge twice (the killed run's, then the recovery's), ship once.
    assert ledger_calls(ledger) == ["act reserve", "act charge", "act charge", "act ship"]


async def test_the_worker_stops_gracefully_on_sigterm(url: str, tmp_path: pathlib.Path) -> None:
    ledger = tmp_path / "ledger"
    saga_id = await kill_and_expire(start_runner(url, "sigterm", ledger), url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cqrs", "worker", "--url", url, "--app", "tests.ops_sagas:saga_map",
         "--poll-interval", "0.1", "--concurrency", "2"],
        cwd=ROOT, env=env(CQRS_TEST_LEDGER=str(ledger)), text=True, stderr=subprocess.PIPE,
    )
    assert worker.stderr is not None
    seen: list[str] = []
    for line in worker.stderr:
        seen.append(line)
        if f"saga {saga_id} (ShopSaga) ended completed" in line:
            break
    else:
        pytest.fail("".join(seen))
    worker.send_signal(signal.SIGTERM)
    rest = worker.stderr.read()
    worker.stderr.close()
    assert worker.wait(timeout=60) == 0, rest
    assert "SIGTERM received: finishing the sagas in flight" in rest and "worker stopped (1 completed)" in rest
    assert "Traceback" not in "".join(seen) + rest
