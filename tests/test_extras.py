"""A missing extra fails with an ImportError that says what to install.

(The FastAPI, Flask and Django integrations have their own such tests next to
their suites.)
"""

from __future__ import annotations

import importlib
import sys

import pytest


def test_the_sqlalchemy_storage_without_sqlalchemy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "cqrs.saga.storage.sqlalchemy", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'cqrs-saga\[sqlalchemy\]'"):
        importlib.import_module("cqrs.saga.storage.sqlalchemy")


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1/test", "asyncpg", "postgres"),
        ("sqlite+aiosqlite:///never-created.sqlite3", "aiosqlite", "sqlite"),
        ("mysql+asyncmy://root@127.0.0.1/test", "asyncmy", "mysql"),
        ("mariadb+asyncmy://root@127.0.0.1/test", "asyncmy", "mysql"),
    ],
)
def test_a_storage_url_without_its_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, driver: str, extra: str
) -> None:
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    monkeypatch.setitem(sys.modules, driver, None)
    with pytest.raises(ImportError, match=rf"not installed: pip install 'cqrs-saga\[{extra}\]'"):
        SqlAlchemySagaStorage.from_url(url)


def test_the_circuit_breaker_without_aiobreaker_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cqrs.adapters.circuit_breaker import AioBreakerAdapter

    monkeypatch.setitem(sys.modules, "aiobreaker", None)
    with pytest.raises(ImportError, match=r"pip install 'cqrs-saga\[aiobreaker\]'"):
        AioBreakerAdapter(fail_max=1)
