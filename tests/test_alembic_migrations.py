"""The Alembic revision shipped in the package, from a user's own Alembic environment: schema 1 -> current, rows kept.

The environment is what ``alembic init`` makes, reduced to what matters: ``version_locations`` naming the
package's directory next to the user's own, and ``alembic upgrade heads``.
"""

from __future__ import annotations

import pathlib
import textwrap

import pytest
import sqlalchemy as sa
from tests.schema_history import first_schema
from tests.test_schema_versions import SAGA_ID, insert_old_saga

from cqrs.saga.storage.sqlalchemy import SCHEMA_VERSION
from cqrs.saga.storage.sqlalchemy._layout import inspect_schema

ENV_PY = textwrap.dedent('''
    from alembic import context
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
''')


def sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return sync_url(str(request.getfixturevalue(f"{request.param}_url")))


def test_alembic_upgrades_the_first_schema_from_the_users_environment(url: str, tmp_path: pathlib.Path) -> None:
    from alembic import command
    from alembic.config import Config

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        first_schema(conn)
        insert_old_saga(conn)
    (tmp_path / "alembic" / "versions").mkdir(parents=True)
    (tmp_path / "alembic" / "env.py").write_text(ENV_PY)
    (tmp_path / "alembic" / "script.py.mako").write_text("")
    ini = tmp_path / "alembic.ini"
    ini.write_text(textwrap.dedent(f"""
        [alembic]
        script_location = {tmp_path / 'alembic'}
        path_separator = space
        version_locations = {tmp_path / 'alembic' / 'versions'} cqrs.saga.storage.sqlalchemy:migrations
        sqlalchemy.url = {url}
    """))
    command.upgrade(Config(str(ini)), "heads")
    with engine.begin() as conn:
        report = inspect_schema(conn)
        assert report.ok and report.version == report.recorded == SCHEMA_VERSION, report.lines()
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "cqrs_saga_0002"
        status = conn.execute(sa.text("SELECT status FROM saga_executions")).scalar_one()
        assert status == "compensation_failed"
        assert conn.execute(sa.text("SELECT COUNT(*) FROM saga_log")).scalar_one() == 3
    command.upgrade(Config(str(ini)), "cqrs_saga@head")  # already there: nothing to do
    engine.dispose()
    assert SAGA_ID
