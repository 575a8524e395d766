"""One configuration object for every integration: storage, sagas, container, event handlers, knobs.

`SagaConfig` is immutable data: nothing is opened or cached on it behind
the caller's back, so ``dataclasses.replace(config, ...)`` is a complete
copy. What a config opens (the storage, the mediator, a recovery worker)
belongs to the runtime that opened it (`cqrs.integrations` keep one per app).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import typing

from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.events import EventMap
    from cqrs.message_brokers.protocol import MessageBroker
    from cqrs.saga.recovery import RecoveryWorker

__all__ = ["SagaConfig", "configure", "get_config"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class SagaConfig:
    """Everything the web integrations need, framework-agnostic; immutable.

    ``storage_url`` picks the storage: ``memory://``,
    ``sqlite+aiosqlite:///path.db``, ``postgresql+asyncpg://user@host/db`` or
    ``mysql+asyncmy://user@host/db`` (``sqlite:///``, ``postgresql://``,
    ``mysql://`` and ``mariadb://`` get the async driver added); or give a
    ready ``storage`` (its owner closes it, not the integration).
    ``sagas`` are registered by name (for recovery) and by context type;
    ``container`` is a ``di.Container`` or any `cqrs.Container`.

    What every run gets, on every path (requests, background runs, webhooks,
    recovery): ``event_map`` (an `cqrs.EventMap`) or ``domain_events_mapper``
    (a function filling one, as `cqrs.bootstrap` takes it) for the domain
    events' handlers, ``message_broker`` for notification events, and
    ``hooks`` (`cqrs.SagaHook`).

    ``outbox``: notification events go to the outbox table with their
    step's checkpoint (and a start's events with the start) instead of
    straight to ``message_broker`` (`cqrs.outbox`). ``relay``: the runtime
    also runs an `cqrs.outbox.OutboxRelay` publishing that outbox through
    ``message_broker`` (woken at once by this process's commits, polling
    every ``relay_interval`` seconds for the rest); it needs both
    ``outbox`` and ``message_broker``. Relays may also run elsewhere
    (``cqrs-saga relay``, ``manage.py saga_relay``): any number share the work.

    Every value is checked when the config is made: a wrong type, a number
    out of range or (in `from_mapping` / `from_env`) an unknown key is a
    `ValueError` naming it and, for a key, the closest valid one.
    """

    storage_url: str = "memory://"
    sagas: typing.Sequence[type[Saga[typing.Any]]] = ()
    container: typing.Any = None
    correlation_header: str = "X-Correlation-ID"
    compensation_retry_count: int = 3
    compensation_retry_delay: float = 1.0
    compensation_retry_backoff: float = 2.0
    lease_seconds: float = 30.0
    compensation_commits: str = "together"
    create_tables: bool = True
    recovery: bool = False
    recovery_interval: float = 5.0
    max_body_bytes: int = 1_048_576
    logging: bool = True
    storage: SagaStorage | None = None
    event_map: EventMap | None = None
    domain_events_mapper: typing.Callable[[EventMap], None] | None = None
    message_broker: MessageBroker | None = None
    hooks: typing.Sequence[object] = ()
    outbox: bool = False
    relay: bool = False
    relay_interval: float = 1.0

    def __post_init__(self) -> None:
        for name, kind in _KINDS.items():
            _check(name, getattr(self, name), kind)
        object.__setattr__(self, "sagas", tuple(self.sagas))
        object.__setattr__(self, "hooks", tuple(self.hooks))
        storage_url(self.storage_url)  # an unsupported URL is refused now, not at first use
        if not self.correlation_header or not all(c.isalnum() or c == "-" for c in self.correlation_header):
            raise ValueError(
                f"Saga setting CORRELATION_HEADER must be an HTTP header name, got {self.correlation_header!r}"
            )
        if self.compensation_commits not in ("together", "each"):
            raise ValueError(
                f"Saga setting COMPENSATION_COMMITS must be 'together' or 'each', got {self.compensation_commits!r}"
            )
        if self.relay and not self.outbox:
            raise ValueError("Saga setting RELAY publishes the outbox: it needs OUTBOX = true as well")
        if self.relay and self.message_broker is None:
            raise ValueError("Saga setting RELAY publishes through the config's message_broker: give one")

    @classmethod
    def from_env(cls, prefix: str = "CQRS_SAGA_", **overrides: typing.Any) -> SagaConfig:
        """Read ``{prefix}STORAGE_URL``, ``{prefix}CORRELATION_HEADER``, ``{prefix}LEASE_SECONDS``, ... .

        An environment variable under ``prefix`` that names no setting is an
        error (naming it and the closest setting), not a silent default.
        """
        values = {key[len(prefix):]: value for key, value in os.environ.items() if key.startswith(prefix)}
        return cls.from_mapping(values, where=f"environment variable {prefix}", **overrides)

    @classmethod
    def from_mapping(
        cls, settings: typing.Mapping[str, typing.Any], *, where: str = "", **overrides: typing.Any
    ) -> SagaConfig:
        """Build from a mapping with upper- or lower-case keys (Flask ``app.config``, Django settings).

        Strings are read as the field's type (``"30"``, ``"true"``); other
        values must already be of it. Unknown keys raise `ValueError` naming
        each (prefixed with ``where``) and the closest known key.
        """
        values: dict[str, typing.Any] = {}
        for key, raw in settings.items():
            name = str(key).lower()
            if name not in SETTABLE:
                raise ValueError(unknown_key(f"{where}{key}", name.upper(), sorted(n.upper() for n in SETTABLE)))
            values[name] = _coerce(name, raw)
        values.update(overrides)
        return cls(**values)

    # -- what runtimes build from it ------------------------------------------------------

    @functools.cached_property
    def saga_map(self) -> SagaMap:
        """The sagas by name and context type (built once per config from ``sagas``)."""
        saga_map = SagaMap()
        for saga_type in self.sagas:
            saga_map.register(saga_type)
        return saga_map

    @property
    def engine_settings(self) -> EngineSettings:
        """The engine settings these fields make (compensation retries, lease length)."""
        return EngineSettings(
            compensation_retry=RetryPolicy(
                attempts=self.compensation_retry_count,
                delay=self.compensation_retry_delay,
                backoff=self.compensation_retry_backoff,
            ),
            lease_seconds=self.lease_seconds,
            compensation_commits=typing.cast(typing.Literal["together", "each"], self.compensation_commits),
        )

    def mediator(self, storage: SagaStorage | None = None, *, hooks: typing.Sequence[object] = ()) -> SagaMediator:
        """A mediator over ``storage`` (default: the config's ``storage``) with this config's sagas,
        container, settings, event handlers, message broker, outbox and hooks (and ``hooks`` after those).

        A config that names its storage by URL has no storage of its own: an
        integration's runtime opens it (`cqrs.integrations`), or pass one here.
        """
        from cqrs.saga.bootstrap import bootstrap

        storage = storage if storage is not None else self.storage
        if storage is None:
            raise RuntimeError(
                f"SagaConfig names its storage by URL ({self.storage_url!r}): open it first "
                "(the web integrations' runtime does) and pass it, config.mediator(storage)"
            )
        container = self.container
        if container is None:
            import di

            container = di.Container()
        event_map = self.event_map
        mapper = self.domain_events_mapper
        if event_map is not None:
            given = event_map

            def mapper(target: EventMap) -> None:
                for event_type, handlers in given.items():
                    for handler in handlers:
                        target.bind(event_type, handler)
                if self.domain_events_mapper is not None:
                    self.domain_events_mapper(target)

        settings = self.engine_settings
        return bootstrap(
            container,
            message_broker=self.message_broker,
            sagas_mapper=self.saga_map,
            domain_events_mapper=mapper,
            saga_storage=storage,
            compensation_retry_count=settings.compensation_retry.attempts,
            compensation_retry_delay=settings.compensation_retry.delay,
            compensation_retry_backoff=settings.compensation_retry.backoff,
            lease_seconds=self.lease_seconds,
            compensation_commits=settings.compensation_commits,
            hooks=(*self.hooks, *hooks),
            outbox=self.outbox,
        )

    def recovery_worker(self, storage: SagaStorage | None = None, **options: typing.Any) -> RecoveryWorker:
        """A `RecoveryWorker` of `mediator` (``storage`` as there), polling every ``recovery_interval``.

        ``options`` are passed on (``batch_size``, ``concurrency``, ``shutdown_grace``, ...).
        """
        options.setdefault("poll_interval", self.recovery_interval)
        return self.mediator(storage).recovery_worker(**options)


class _Kind(typing.NamedTuple):
    types: tuple[type, ...]
    text: str
    minimum: float | None = None  # values must be above (or equal, with inclusive) this
    inclusive: bool = False


_POSITIVE = _Kind((int, float), "a positive number", 0.0)
_NON_NEGATIVE = _Kind((int, float), "a number of 0 or more", 0.0, True)
_KINDS: dict[str, _Kind] = {
    "storage_url": _Kind((str,), "a storage URL"),
    "correlation_header": _Kind((str,), "a header name"),
    "compensation_retry_count": _Kind((int,), "a whole number of 1 or more", 1.0, True),
    "compensation_retry_delay": _NON_NEGATIVE,
    "compensation_retry_backoff": _Kind((int, float), "a number of 1 or more", 1.0, True),
    "lease_seconds": _POSITIVE,
    "compensation_commits": _Kind((str,), "'together' or 'each'"),
    "create_tables": _Kind((bool,), "true or false"),
    "recovery": _Kind((bool,), "true or false"),
    "recovery_interval": _POSITIVE,
    "max_body_bytes": _Kind((int,), "a whole number of bytes, 1 or more", 1.0, True),
    "logging": _Kind((bool,), "true or false"),
    "outbox": _Kind((bool,), "true or false"),
    "relay": _Kind((bool,), "true or false"),
    "relay_interval": _POSITIVE,  # 0 would make an idle relay poll the database without pause
}

#: The fields `SagaConfig.from_mapping` and `from_env` read (the rest are objects, given in code).
SETTABLE = frozenset(_KINDS)


def _check(name: str, value: typing.Any, kind: _Kind) -> None:
    ok = isinstance(value, kind.types) and not (isinstance(value, bool) and bool not in kind.types)
    if ok and kind.minimum is not None:
        number = float(value)
        ok = math.isfinite(number) and (number >= kind.minimum if kind.inclusive else number > kind.minimum)
    if not ok:
        raise ValueError(f"Saga setting {name.upper()} must be {kind.text}, got {value!r}")


def _coerce(name: str, raw: typing.Any) -> typing.Any:
    """A setting read from text (environment, ``.env``) as its field's type; other values as they are."""
    if not isinstance(raw, str) or name not in _KINDS:
        return raw
    kind = _KINDS[name]
    try:
        if kind.types == (bool,):
            return parse_bool(raw, strict=True)
        if kind.types == (int,):
            return int(raw)
        if float in kind.types:
            return float(raw)
    except ValueError:
        raise ValueError(f"Saga setting {name.upper()} must be {kind.text}, got {raw!r}") from None
    return raw


def parse_bool(value: typing.Any, *, strict: bool = False) -> bool:
    """A setting's truth: ``1``/``true``/``yes``/``on`` (any case) for strings.

    With ``strict``, only those and ``0``/``false``/``no``/``off``/empty are
    read, anything else is a `ValueError`; otherwise ``bool()`` of other values.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if strict and text not in _TRUE | _FALSE:
            raise ValueError(f"{value!r} is not true or false")
        return text in _TRUE
    if strict and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return bool(value)


def unknown_key(key: str, name: str, known: typing.Sequence[str]) -> str:
    """The message for an unknown setting: it, the closest known one (if any is close) and all of them."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"Unknown saga setting {key}{hint} (known: {', '.join(known)})"


def storage_url(url: str) -> str:
    """``url`` with the async driver the storage uses (``sqlite://``, ``postgresql://``, ``mysql://``
    and ``mariadb://`` get it).

    `ValueError` for a URL no storage takes.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    elif url.startswith("sqlite://"):
        url = "sqlite+aiosqlite://" + url.split("://", 1)[1]
    elif url.startswith(("mysql://", "mariadb://")):
        scheme, rest = url.split("://", 1)
        url = f"{scheme}+asyncmy://{rest}"
    if not url.startswith(("memory://", "postgresql+asyncpg://", "sqlite+aiosqlite://", *_MYSQL_SCHEMES)):
        raise ValueError(
            f"Unsupported saga storage URL {_redact(url)!r}: use memory://, sqlite+aiosqlite:///file.db, "
            "postgresql+asyncpg://user@host/db or mysql+asyncmy://user@host/db"
        )
    return url


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


_MYSQL_SCHEMES = tuple(f"{db}+{driver}://" for db in ("mysql", "mariadb") for driver in ("asyncmy", "aiomysql"))


async def open_storage(url: str, *, create_tables: bool = True) -> SagaStorage:
    """A storage for a URL: ``memory://``, SQLite (aiosqlite), PostgreSQL (asyncpg) or MySQL/MariaDB (asyncmy)."""
    url = storage_url(url)
    if url.startswith("memory://"):
        from cqrs.saga.storage.memory import MemorySagaStorage

        return MemorySagaStorage()
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    storage = SqlAlchemySagaStorage.from_url(url)
    if create_tables:
        try:
            await storage.create_tables()
        except BaseException:
            await storage.close()
            raise
    return storage


_global: SagaConfig | None = None


def configure(config: SagaConfig) -> None:
    """Make ``config`` the process-wide default the integrations fall back to."""
    global _global
    _global = config


def get_config() -> SagaConfig:
    """The config given to `configure`; raises if there is none."""
    if _global is None:
        raise RuntimeError("No SagaConfig configured: call cqrs.config.configure(SagaConfig(...))")
    return _global
