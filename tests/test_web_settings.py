"""Settings that cannot be silently wrong, and management commands that fail in one line.

`SagaConfig` is immutable data checked when made; the environment, Flask's
``app.config`` and Django's ``CQRS_SAGA`` / ``CQRS_SAGA_WEBHOOKS`` refuse an
unknown key (naming the closest valid one) or a value of the wrong type, at
start-up and in ``manage.py check``; a webhook secret that is empty or
missing is refused. The Django commands answer an unreachable or unmigrated
database with one line and exit 1, never a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing

import di
import flask
import pytest

from cqrs.config import SagaConfig
from cqrs.events import EventMap
from cqrs.integrations.flask import SagaExtension
from django_project.testing import EXAMPLE, Database, _django_configured, _saga_db  # noqa: F401
from django_project.webhook_sagas import SECRET

# -- SagaConfig ------------------------------------------------------------------------------------------


def test_a_config_is_immutable_and_a_replaced_copy_is_complete() -> None:
    events = EventMap()
    hook = object()
    config = SagaConfig(storage_url="sqlite:///x.db", container=di.Container(), event_map=events, hooks=[hook])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.storage_url = "memory://"  # type: ignore[misc]
    copy = dataclasses.replace(config, lease_seconds=7.0)
    for field in dataclasses.fields(SagaConfig):
        if field.name != "lease_seconds":
            assert getattr(copy, field.name) == getattr(config, field.name), field.name
    assert copy.lease_seconds == 7.0 and copy.hooks == (hook,) and copy.event_map is events
    assert vars(copy).keys() - {f.name for f in dataclasses.fields(SagaConfig)} <= {"saga_map"}
    with pytest.raises(RuntimeError, match="open it first"):
        config.mediator()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lease_seconds": "soon"}, "LEASE_SECONDS must be a positive number, got 'soon'"),
        ({"lease_seconds": -1}, "LEASE_SECONDS must be a positive number"),
        ({"max_body_bytes": 0}, "MAX_BODY_BYTES must be a whole number of bytes, 1 or more"),
        ({"recovery": "sometimes"}, "RECOVERY must be true or false"),
        ({"compensation_retry_count": 2.5}, "COMPENSATION_RETRY_COUNT must be a whole number"),
        ({"storage_url": "oracle://x"}, "Unsupported saga storage URL"),
        ({"correlation_header": "X Trace\\n"}, "CORRELATION_HEADER must be an HTTP header name"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(values: dict[str, typing.Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SagaConfig.from_mapping(values)


def test_text_settings_are_read_as_their_type_and_unknown_ones_named(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SagaConfig.from_mapping({"LEASE_SECONDS": "12.5", "RECOVERY": "yes", "MAX_BODY_BYTES": "64"})
    assert (config.lease_seconds, config.recovery, config.max_body_bytes) == (12.5, True, 64)
    monkeypatch.setenv("CQRS_SAGA_LEASE_SECONDS", "3")
    assert SagaConfig.from_env().lease_seconds == 3.0
    monkeypatch.setenv("CQRS_SAGA_LEASE_SECOND", "3")
    with pytest.raises(ValueError, match=r"CQRS_SAGA_LEASE_SECOND; did you mean LEASE_SECONDS\?"):
        SagaConfig.from_env()


def test_flask_refuses_unknown_keys_under_its_prefix() -> None:
    app = flask.Flask(__name__)
    app.config["CQRS_SAGA_MAX_BODY_BYTE"] = 10
    with pytest.raises(ValueError, match=r"CQRS_SAGA_MAX_BODY_BYTE.*did you mean CQRS_SAGA_MAX_BODY_BYTES\?"):
        SagaExtension(app)


# -- Django settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("webhooks", "message"),
    [
        ({"SECRET": ""}, "CQRS_SAGA_WEBHOOKS['SECRET'] is empty"),
        ({"TOLERANCE": 300}, "CQRS_SAGA_WEBHOOKS['SECRET'] is missing"),
        ({"SECRT": SECRET}, r"Unknown key CQRS_SAGA_WEBHOOKS\['SECRT'\]; did you mean SECRET\?"),
        ({"SECRET": SECRET, "TOLERENCE": 5}, r"'TOLERENCE'\]; did you mean TOLERANCE\?"),
        ({"SECRET": SECRET, "TOLERANCE": "soon"}, "TOLERANCE'] must be a positive number of seconds, got 'soon'"),
        ({"SECRET": SECRET, "MAX_BODY_BYTES": 0}, "MAX_BODY_BYTES'] must be a positive integer, got 0"),
        ({"SECRET": SECRET, "ALGORITHM": "nope"}, "not an HMAC algorithm"),
        ({"INSECURE_UNSIGNED_SOURCES": "legacy"}, "must be a list of source names"),
    ],
)
def test_bad_webhook_settings_fail_manage_py_check(
    saga_db: Database, settings: typing.Any, webhooks: dict[str, typing.Any], message: str
) -> None:
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    from cqrs.integrations.django import run_saga
    from django_project.sagas import EchoContext

    settings.CQRS_SAGA_WEBHOOKS = webhooks
    errors = [e for e in checks.run_checks() if e.id == "cqrs_saga.E001"]
    assert len(errors) == 1 and (message in errors[0].msg or re.search(message, errors[0].msg)), errors
    with pytest.raises(ImproperlyConfigured):
        run_saga(EchoContext(text="x"))


@pytest.mark.parametrize("saga_db", ["sqlite"], indirect=True)
def test_webhook_urls_without_their_setting_stop_the_start(saga_db: Database, settings: typing.Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    import cqrs.integrations.django.webhooks as webhooks

    settings.CQRS_SAGA_WEBHOOKS = None
    with pytest.raises(ImproperlyConfigured, match="CQRS_SAGA_WEBHOOKS is not set"):
        webhooks.urlpatterns  # noqa: B018  (what include() reads)
    settings.CQRS_SAGA_WEBHOOKS = {"INSECURE_UNSIGNED_SOURCES": ["payment_due"]}
    assert len(webhooks.urlpatterns) == 2  # explicitly unsigned sources need no secret


# -- management commands ----------------------------------------------------------------------------------


def manage(database: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    environment.update(DATABASE_URL=database, PYTHONUNBUFFERED="1", **env)
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        cwd=EXAMPLE, env=environment, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", [["saga_worker", "--once"], ["saga_worker"], ["saga_list"], ["saga_check"]])
def test_commands_fail_in_one_line_on_an_unreachable_or_unmigrated_database(
    command: list[str], tmp_path: typing.Any
) -> None:
    unmigrated = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    (tmp_path / "empty.sqlite3").touch()
    cases = {
        "unreachable": ("sqlite:///" + str(tmp_path / "db.sqlite3"),
                        {"CQRS_SAGA_STORAGE_URL": "postgresql://nobody:secret@127.0.0.1:9/none"}),
        "unmigrated": (unmigrated, {}),
        "missing directory": (f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'db.sqlite3'}", {}),
    }
    for case, (database, env) in cases.items():
        done = manage(database, *command, **env)
        assert done.returncode == 1, (case, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout, (case, done.stderr)
        assert "Exception in thread" not in done.stderr, (case, done.stderr)
        # What is not a log record (the example logs to stderr, with a timestamp first) is the error.
        errors = [line for line in done.stderr.splitlines() if line.strip() and not re.match(r"\d{4}-\d\d-\d\d ", line)]
        assert len(errors) == 1 and errors[0].startswith("CommandError: "), (case, done.stderr)
        assert "secret" not in done.stderr + done.stdout, case


def test_compensation_commits_is_a_setting_the_mediator_gets() -> None:
    from cqrs.config import SagaConfig
    from cqrs.saga.settings import EngineSettings
    from cqrs.saga.storage.memory import MemorySagaStorage

    config = SagaConfig.from_mapping({"COMPENSATION_COMMITS": "each"})
    assert config.mediator(MemorySagaStorage()).settings.compensation_commits == "each"
    assert SagaConfig().mediator(MemorySagaStorage()).settings.compensation_commits == "together"
    with pytest.raises(ValueError, match="COMPENSATION_COMMITS must be 'together' or 'each'"):
        SagaConfig(compensation_commits="later")
    with pytest.raises(ValueError, match="compensation_commits"):
        EngineSettings(compensation_commits="later")  # type: ignore[arg-type]
