"""One configuration object for every integration: storage, sagas, container, knobs."""

from __future__ import annotations

import dataclasses
import os
import typing

from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.saga.recovery import RecoveryWorker

__all__ = ["SagaConfig", "configure", "get_config"]

_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass
class SagaConfig:
    """Everything the web integrations need, framework-agnostic.

    ``storage_url`` picks the storage: ``memory://``,
    ``sqlite+aiosqlite:///path.db``, ``postgresql+asyncpg://user@host/db`` or
    ``mysql+asyncmy://user@host/db`` (``sqlite:///``, ``postgresql://``,
    ``mysql://`` and ``mariadb://`` get the async driver added).
    ``sagas`` are registered by name (for recovery) and by context type;
    ``container`` is a ``di.Container`` or any `cqrs.Container`.

    Call `initialize` once at startup (opens pools, creates tables when
    ``create_tables``) and `close` at shutdown.
    """

    storage_url: str = "memory://"
    sagas: typing.Sequence[type[Saga[typing.Any]]] = ()
    container: typing.Any = None
    correlation_header: str = "X-Correlation-ID"
    compensation_retry_count: int = 3
    compensation_retry_delay: float = 1.0
    compensation_retry_backoff: float = 2.0
    lease_seconds: float = 30.0
    create_tables: bool = True
    recovery: bool = False
    recovery_interval: float = 5.0
    max_body_bytes: int = 1_048_576
    logging: bool = True
    storage: SagaStorage | None = None

    @classmethod
    def from_env(cls, prefix: str = "CQRS_SAGA_", **overrides: typing.Any) -> SagaConfig:
        """Read ``{prefix}STORAGE_URL``, ``{prefix}CORRELATION_HEADER``, ``{prefix}LEASE_SECONDS``, ... ."""
        values: dict[str, typing.Any] = {}
        for name in _SETTABLE:
            raw = os.environ.get(prefix + name.upper())
            if raw is not None:
                values[name] = raw
        return cls.from_mapping(values, **overrides)

    @classmethod
    def from_mapping(cls, settings: typing.Mapping[str, typing.Any], **overrides: typing.Any) -> SagaConfig:
        """Build from a mapping with upper- or lower-case keys (Flask ``app.config``, Django settings).

        Unknown keys raise `ValueError` naming them, so a typo does not pass silently.
        """
        values: dict[str, typing.Any] = {}
        unknown = []
        for key, raw in settings.items():
            name = key.lower()
            if name not in _SETTABLE:
                unknown.append(key)
                continue
            values[name] = _coerce(name, raw)
        if unknown:
            raise ValueError(
                f"Unknown saga setting(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(n.upper() for n in _SETTABLE))}"
            )
        values.update(overrides)
        return cls(**values)

    # -- lifecycle ------------------------------------------------------------------

    async def initialize(self) -> None:
        """Open the storage (and create its tables if ``create_tables``). Idempotent."""
        if self.storage is not None:
            return
        self.storage = await open_storage(self.storage_url, create_tables=self.create_tables)
        self._owns_storage = True

    async def close(self) -> None:
        """Close what `initialize` opened (engines, pools)."""
        if self.storage is not None and getattr(self, "_owns_storage", False):
            await self.storage.close()
            self.storage = None
            self._owns_storage = False

    # -- what integrations build from it ------------------------------------------------

    @property
    def saga_map(self) -> SagaMap:
        cached: SagaMap | None = getattr(self, "_saga_map", None)
        if cached is None:
            cached = SagaMap()
            for saga_type in self.sagas:
                cached.register(saga_type)
            self._saga_map = cached
        return cached

    @property
    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            compensation_retry=RetryPolicy(
                attempts=self.compensation_retry_count,
                delay=self.compensation_retry_delay,
                backoff=self.compensation_retry_backoff,
            ),
            lease_seconds=self.lease_seconds,
        )

    def require_storage(self) -> SagaStorage:
        if self.storage is None:
            raise RuntimeError(
                "SagaConfig is not initialized: await config.initialize() at startup "
                "(the framework integrations do this in their lifespan / app setup)"
            )
        return self.storage

    def mediator(self) -> SagaMediator:
        """A mediator over this config's storage, sagas and container."""
        from cqrs.container import as_container

        container = self.container
        if container is None:
            import di

            container = self.container = di.Container()
        return SagaMediator(
            self.saga_map,
            as_container(container),
            storage=self.require_storage(),
            settings=self.engine_settings,
        )

    def recovery_worker(self, **options: typing.Any) -> RecoveryWorker:
        """A `RecoveryWorker` over this config's storage, sagas, container and settings.

        Polls every ``recovery_interval`` seconds; ``options`` are passed on
        (``batch_size``, ``concurrency``, ``shutdown_grace``, ...).
        """
        from cqrs.saga.recovery import RecoveryWorker

        if self.container is None:
            import di

            self.container = di.Container()
        options.setdefault("settings", self.engine_settings)
        options.setdefault("poll_interval", self.recovery_interval)
        return RecoveryWorker(self.saga_map, self.container, self.require_storage(), **options)


_SETTABLE = {f.name for f in dataclasses.fields(SagaConfig)} - {"sagas", "container", "storage"}
_FLOATS = {"compensation_retry_delay", "compensation_retry_backoff", "lease_seconds", "recovery_interval"}
_INTS = {"compensation_retry_count", "max_body_bytes"}
_BOOLS = {"create_tables", "recovery", "logging"}


def _coerce(name: str, raw: typing.Any) -> typing.Any:
    if not isinstance(raw, str):
        return raw
    try:
        if name in _FLOATS:
            return float(raw)
        if name in _INTS:
            return int(raw)
    except ValueError:
        raise ValueError(f"Saga setting {name.upper()} must be a number, got {raw!r}") from None
    if name in _BOOLS:
        return parse_bool(raw)
    return raw


def parse_bool(value: typing.Any) -> bool:
    """A setting's truth: ``1``/``true``/``yes``/``on`` (any case) for strings, ``bool()`` otherwise."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


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
            f"Unsupported saga storage URL {url!r}: use memory://, sqlite+aiosqlite:///file.db, "
            "postgresql+asyncpg://user@host/db or mysql+asyncmy://user@host/db"
        )
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
        await storage.create_tables()
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
