"""Reading ``settings.CQRS_SAGA`` and finding the database the sagas live in."""

from __future__ import annotations

import dataclasses
import os
import typing
import urllib.parse

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from cqrs.config import SagaConfig, parse_bool, storage_url
from cqrs.container import as_container
from cqrs.saga.saga import Saga

#: Keys of ``CQRS_SAGA`` that the Django integration reads itself; the rest go to `SagaConfig.from_mapping`.
DJANGO_KEYS = ("SAGAS", "CONTAINER", "DATABASE", "RUN_ON_COMMIT")
@dataclasses.dataclass
class DjangoSagaSettings:
    """``CQRS_SAGA``, parsed.

    ``config.storage_url`` is only final after `resolve_storage_url`: when
    ``STORAGE_URL`` is not set it is derived from ``DATABASES[database]`` at
    first use, so a test runner's renamed test database is the one used.
    """

    config: SagaConfig
    database: str
    derived: bool
    run_on_commit: bool

    def resolve_storage_url(self) -> str:
        if self.derived:
            self.config.storage_url = storage_url_for_database(self.database)
        return self.config.storage_url

    def shares_database(self, alias: str) -> bool:
        """Whether the saga tables are in the database of Django's ``alias``."""
        if self.derived:
            return alias == self.database
        try:
            django_url = storage_url_for_database(alias)
        except ImproperlyConfigured:
            return False
        return same_database(self.config.storage_url, django_url)


def setting_values(raw: typing.Any, setting: str) -> dict[str, typing.Any]:
    """A dict setting (absent: empty) with upper-cased keys; `ImproperlyConfigured` if it is no dict."""
    if raw is None:
        return {}
    if not isinstance(raw, typing.Mapping):
        raise ImproperlyConfigured(f"{setting} must be a dict, got {type(raw).__name__}")
    return {str(key).upper(): value for key, value in raw.items()}


def load(raw: typing.Any) -> DjangoSagaSettings:
    """Parse a ``CQRS_SAGA`` dict; `ImproperlyConfigured` names what is wrong."""
    values = setting_values(raw, "CQRS_SAGA")
    sagas = _sagas(values.pop("SAGAS", ()))
    container = _container(values.pop("CONTAINER", None))
    database = values.pop("DATABASE", "default")
    if not isinstance(database, str) or not database:
        raise ImproperlyConfigured(f"CQRS_SAGA['DATABASE'] must be a database alias, got {database!r}")
    run_on_commit = parse_bool(values.pop("RUN_ON_COMMIT", True))
    derived = not values.get("STORAGE_URL")
    if derived:
        if database not in connections.settings:
            raise ImproperlyConfigured(
                f"CQRS_SAGA['DATABASE'] is {database!r}, which is not in DATABASES "
                f"({', '.join(connections.settings) or 'none'})"
            )
        values["STORAGE_URL"] = storage_url_for_database(database)
        # `manage.py migrate` creates the tables in Django's database (the saga app's migration);
        # creating them again on first use could wait on a SQLite write lock a request holds.
        values.setdefault("CREATE_TABLES", False)
    elif not _storage_url_ok(str(values["STORAGE_URL"])):
        raise ImproperlyConfigured(
            f"CQRS_SAGA['STORAGE_URL'] is {redact(str(values['STORAGE_URL']))!r}: use memory://, "
            "sqlite+aiosqlite:///file.db or postgresql+asyncpg://user@host/db (or leave it out: "
            "sagas then live in the Django database)"
        )
    try:
        config = SagaConfig.from_mapping(values, sagas=sagas, container=container)
    except (TypeError, ValueError) as error:
        raise ImproperlyConfigured(
            f"CQRS_SAGA: {error} (the Django integration also reads {', '.join(DJANGO_KEYS)})"
        ) from error
    return DjangoSagaSettings(config=config, database=database, derived=derived, run_on_commit=run_on_commit)


def _storage_url_ok(url: str) -> bool:
    try:
        storage_url(url)
    except ValueError:
        return False
    return True


def _sagas(paths: typing.Any) -> list[type[Saga[typing.Any]]]:
    if isinstance(paths, (str, type)) or not isinstance(paths, typing.Iterable):
        raise ImproperlyConfigured(
            "CQRS_SAGA['SAGAS'] must be a list of dotted paths to Saga classes, "
            f"e.g. ['orders.sagas.OrderSaga'], got {paths!r}"
        )
    sagas: list[type[Saga[typing.Any]]] = []
    for position, path in enumerate(paths):
        where = f"CQRS_SAGA['SAGAS'][{position}]"
        saga_type = _import(path, where) if isinstance(path, str) else path
        if not (isinstance(saga_type, type) and issubclass(saga_type, Saga)):
            raise ImproperlyConfigured(f"{where} is {saga_type!r}, which is not a Saga subclass")
        if saga_type.context_type is None:
            raise ImproperlyConfigured(
                f"{where}: {saga_type.__qualname__} declares no context type; subclass Saga[YourContext]"
            )
        sagas.append(saga_type)
    return sagas


def _container(value: typing.Any) -> typing.Any:
    if value is None:
        return None
    where = "CQRS_SAGA['CONTAINER']"
    if isinstance(value, str):
        value = _import(value, where)
    container = value
    try:
        as_container(container)
    except TypeError:
        if not callable(value):
            raise ImproperlyConfigured(
                f"{where} is {value!r}: give a dotted path to a function returning a di.Container "
                "(or an object with an async resolve(type) method)"
            ) from None
        try:
            container = value()
        except Exception as error:
            raise ImproperlyConfigured(f"{where}: calling {value!r} failed: {error}") from error
        try:
            as_container(container)
        except TypeError as error:
            raise ImproperlyConfigured(f"{where}: {value!r} returned {container!r}, not a container") from error
    return container


def _import(path: str, where: str) -> typing.Any:
    try:
        return import_string(path)
    except ImportError as error:
        raise ImproperlyConfigured(f"{where} is {path!r}, which cannot be imported: {error}") from error


# -- the Django database as a storage URL ---------------------------------------------


def storage_url_for_database(alias: str) -> str:
    """The async SQLAlchemy URL of Django's ``DATABASES[alias]`` (SQLite file or PostgreSQL)."""
    db = connections.settings.get(alias)
    if db is None:
        raise ImproperlyConfigured(f"There is no database {alias!r} in DATABASES")
    engine = str(db.get("ENGINE", ""))
    name = db.get("NAME")
    if engine.endswith("sqlite3"):
        text = os.fspath(name) if name else ""
        if not text or text == ":memory:" or "mode=memory" in text or text.startswith("file:"):
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] is an in-memory SQLite database, which another connection "
                "cannot see; give it a file NAME (and TEST NAME) or set CQRS_SAGA['STORAGE_URL']"
            )
        return f"sqlite+aiosqlite:///{os.path.abspath(text)}"
    if "postgresql" in engine or "postgis" in engine:
        user = urllib.parse.quote(str(db.get("USER") or ""), safe="")
        password = urllib.parse.quote(str(db.get("PASSWORD") or ""), safe="")
        host = str(db.get("HOST") or "")
        port = str(db.get("PORT") or "")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        location = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        url = f"postgresql+asyncpg://{auth}{location}/{urllib.parse.quote(str(name or ''), safe='')}"
        sslmode = (db.get("OPTIONS") or {}).get("sslmode")
        if sslmode:
            url += f"?ssl={urllib.parse.quote(str(sslmode))}"
        return url
    raise ImproperlyConfigured(
        f"Sagas cannot be kept in DATABASES[{alias!r}] ({engine or 'no ENGINE'}): the saga storage "
        "supports SQLite and PostgreSQL; set CQRS_SAGA['STORAGE_URL']"
    )


def same_database(a: str, b: str) -> bool:
    """Whether two storage URLs name the same database (drivers and passwords aside)."""
    return _identity(a) == _identity(b)


def _identity(url: str) -> tuple[str, ...]:
    scheme, _, rest = url.partition("://")
    backend = scheme.split("+", 1)[0]
    if backend == "postgres":
        backend = "postgresql"
    if backend == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return backend, os.path.abspath(path.split("?", 1)[0]) if path else ""
    parsed = urllib.parse.urlsplit(f"{backend}://{rest}")
    return (
        backend,
        urllib.parse.unquote(parsed.username or ""),
        (parsed.hostname or "localhost").lower(),
        str(parsed.port or (5432 if backend == "postgresql" else "")),
        urllib.parse.unquote(parsed.path.lstrip("/")),
    )


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for output."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    auth, _, tail = rest.partition("@")
    if ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}@{tail}"
