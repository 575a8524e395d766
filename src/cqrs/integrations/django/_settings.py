"""Reading ``settings.CQRS_SAGA`` and ``CQRS_SAGA_WEBHOOKS``, and finding the database the sagas live in."""

from __future__ import annotations

import dataclasses
import os
import typing
import urllib.parse

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from cqrs.config import SETTABLE, SagaConfig, parse_bool, storage_url, unknown_key
from cqrs.container import as_container
from cqrs.integrations._webhooks import WebhookEndpoint
from cqrs.integrations.webhooks import SignatureVerifier
from cqrs.saga.saga import Saga

#: Keys of ``CQRS_SAGA`` that the Django integration reads itself; the rest go to `SagaConfig.from_mapping`.
DJANGO_KEYS = ("SAGAS", "CONTAINER", "DATABASE", "RUN_ON_COMMIT", "EVENT_MAP", "MESSAGE_BROKER", "HOOKS")
#: The keys of ``CQRS_SAGA_WEBHOOKS``.
WEBHOOK_KEYS = (
    "SECRET", "SIGNATURE_HEADER", "ALGORITHM", "TIMESTAMP_HEADER", "TOLERANCE", "MAX_BODY_BYTES",
    "INSECURE_UNSIGNED_SOURCES",
)
_WEBHOOK_DEFAULTS: dict[str, typing.Any] = {
    "SIGNATURE_HEADER": "X-Signature",
    "ALGORITHM": "sha256",
    "TIMESTAMP_HEADER": "X-Signature-Timestamp",
    "TOLERANCE": 300.0,
}


@dataclasses.dataclass(frozen=True)
class DjangoSagaSettings:
    """``CQRS_SAGA``, parsed.

    When ``STORAGE_URL`` is not set, the storage URL is derived from
    ``DATABASES[database]`` when the runtime opens (`prepare`), so a test
    runner's renamed test database is the one used.
    """

    config: SagaConfig
    database: str
    derived: bool
    run_on_commit: bool

    def prepare(self, config: SagaConfig) -> SagaConfig:
        """``config`` with the storage URL as it is now (derived from the Django database, if so)."""
        if self.derived:
            return dataclasses.replace(config, storage_url=storage_url_for_database(self.database))
        return config

    def resolve_storage_url(self) -> str:
        return self.prepare(self.config).storage_url

    def shares_database(self, alias: str) -> bool:
        """Whether the saga tables are in the database of Django's ``alias``."""
        if self.derived:
            return alias == self.database
        try:
            django_url = storage_url_for_database(alias)
        except ImproperlyConfigured:
            return False
        return same_database(self.config.storage_url, django_url)


def setting_values(raw: typing.Any, setting: str, known: typing.Collection[str]) -> dict[str, typing.Any]:
    """A dict setting (absent: empty) with upper-cased keys.

    `ImproperlyConfigured` if it is no dict, or for a key not in ``known``
    (naming it and the closest known key).
    """
    if raw is None:
        return {}
    if not isinstance(raw, typing.Mapping):
        raise ImproperlyConfigured(f"{setting} must be a dict, got {type(raw).__name__}")
    values = {str(key).upper(): value for key, value in raw.items()}
    for key in values:
        if key not in known:
            raise ImproperlyConfigured(unknown_key(f"{setting}[{key!r}]", key, sorted(known)).replace(
                "Unknown saga setting", "Unknown key"))
    return values


def load(raw: typing.Any) -> DjangoSagaSettings:
    """Parse a ``CQRS_SAGA`` dict; `ImproperlyConfigured` names what is wrong."""
    values = setting_values(raw, "CQRS_SAGA", {*DJANGO_KEYS, *(name.upper() for name in SETTABLE)})
    sagas = _sagas(values.pop("SAGAS", ()))
    container = _container(values.pop("CONTAINER", None))
    objects = {
        name.lower(): _object(values.pop(name), f"CQRS_SAGA[{name!r}]")
        for name in ("EVENT_MAP", "MESSAGE_BROKER", "HOOKS") if name in values
    }
    database = values.pop("DATABASE", "default")
    if not isinstance(database, str) or not database:
        raise ImproperlyConfigured(f"CQRS_SAGA['DATABASE'] must be a database alias, got {database!r}")
    try:
        run_on_commit = parse_bool(values.pop("RUN_ON_COMMIT", True), strict=True)
    except ValueError as error:
        raise ImproperlyConfigured(f"CQRS_SAGA['RUN_ON_COMMIT'] must be true or false: {error}") from None
    derived = not values.get("STORAGE_URL")
    if derived:
        if database not in connections.settings:
            raise ImproperlyConfigured(
                f"CQRS_SAGA['DATABASE'] is {database!r}, which is not in DATABASES "
                f"({', '.join(connections.settings) or 'none'})"
            )
        values["STORAGE_URL"] = "memory://"  # the real URL is derived when the runtime opens
        # `manage.py migrate` creates the tables in Django's database (the saga app's migration);
        # creating them again on first use could wait on a SQLite write lock a request holds.
        values.setdefault("CREATE_TABLES", False)
    elif not isinstance(values["STORAGE_URL"], str) or not _storage_url_ok(values["STORAGE_URL"]):
        raise ImproperlyConfigured(
            f"CQRS_SAGA['STORAGE_URL'] is {redact(str(values['STORAGE_URL']))!r}: use memory://, "
            "sqlite+aiosqlite:///file.db or postgresql+asyncpg://user@host/db (or leave it out: "
            "sagas then live in the Django database)"
        )
    try:
        config = SagaConfig.from_mapping(values, where="CQRS_SAGA ", sagas=sagas, container=container, **objects)
    except (TypeError, ValueError) as error:
        raise ImproperlyConfigured(f"CQRS_SAGA: {error}") from error
    if derived:
        storage_url_for_database(database)  # a database sagas cannot live in is named now
    return DjangoSagaSettings(config=config, database=database, derived=derived, run_on_commit=run_on_commit)


def load_webhooks(raw: typing.Any) -> WebhookEndpoint | None:
    """A `WebhookEndpoint` from a ``CQRS_SAGA_WEBHOOKS`` dict (None when the setting is absent).

    `ImproperlyConfigured` names what is wrong: an unknown key (and the
    closest known one), a value of the wrong type, an empty or missing
    ``SECRET`` (unless ``INSECURE_UNSIGNED_SOURCES`` lists every source
    meant to go unsigned).
    """
    if raw is None:
        return None
    setting = "CQRS_SAGA_WEBHOOKS"
    options = {**_WEBHOOK_DEFAULTS, **setting_values(raw, setting, WEBHOOK_KEYS)}
    unsigned = options.get("INSECURE_UNSIGNED_SOURCES", ())
    if isinstance(unsigned, str) or not isinstance(unsigned, (list, tuple)) or not all(
        isinstance(source, str) and source for source in unsigned
    ):
        raise ImproperlyConfigured(
            f"{setting}['INSECURE_UNSIGNED_SOURCES'] must be a list of source names, got {unsigned!r}"
        )
    for name in ("SIGNATURE_HEADER", "ALGORITHM"):
        if not isinstance(options[name], str) or not options[name]:
            raise ImproperlyConfigured(f"{setting}[{name!r}] must be a non-empty string, got {options[name]!r}")
    if options["TIMESTAMP_HEADER"] is not None and not isinstance(options["TIMESTAMP_HEADER"], str):
        raise ImproperlyConfigured(f"{setting}['TIMESTAMP_HEADER'] must be a header name or None")
    tolerance = options["TOLERANCE"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ImproperlyConfigured(
            f"{setting}['TOLERANCE'] must be a positive number of seconds, got {tolerance!r}"
        )
    limit = options.get("MAX_BODY_BYTES")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ImproperlyConfigured(f"{setting}['MAX_BODY_BYTES'] must be a positive integer, got {limit!r}")
    secret = options.get("SECRET")
    verifier = None
    if "SECRET" in options or not unsigned:
        if not isinstance(secret, (str, bytes)) or not secret:
            what = "missing" if secret is None else "empty" if not secret else f"a {type(secret).__name__}"
            raise ImproperlyConfigured(
                f"{setting}['SECRET'] is {what}: deliveries could not be verified. Set it (is its "
                "environment variable unset?); a source that cannot sign goes in INSECURE_UNSIGNED_SOURCES"
            )
        try:
            verifier = SignatureVerifier(
                secret,
                header=options["SIGNATURE_HEADER"],
                algorithm=options["ALGORITHM"],
                timestamp_header=options["TIMESTAMP_HEADER"] or None,
                tolerance=float(tolerance),
            )
        except (TypeError, ValueError) as error:
            raise ImproperlyConfigured(f"{setting}: {error}") from error
    return WebhookEndpoint(verifier=verifier, max_body_bytes=limit, insecure_unsigned_sources=tuple(unsigned))


def _object(value: typing.Any, where: str) -> typing.Any:
    """A setting given as an object or as a dotted path to one (a function is called for it)."""
    if isinstance(value, str):
        value = _import(value, where)
        if callable(value) and not isinstance(value, type):
            try:
                value = value()
            except Exception as error:
                raise ImproperlyConfigured(f"{where}: calling {value!r} failed: {error}") from error
    return value


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
