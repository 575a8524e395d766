"""Settings of the orders example: SQLite by default, sagas in the same database.

Environment:

- ``DATABASE_URL``: ``sqlite:///path/to/db.sqlite3`` (default: ``db.sqlite3``
  next to manage.py) or ``postgresql://user:password@host:5432/name``;
- ``CQRS_SAGA_STORAGE_URL``: keep sagas elsewhere (then `atomic_saga_start`
  is not available);
- ``DJANGO_DEBUG``, ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import os
import pathlib
import typing
import urllib.parse

import django

BASE_DIR = pathlib.Path(__file__).resolve().parent.parent


def database_from_url(url: str) -> dict[str, typing.Any]:
    """Django's DATABASES entry for a ``sqlite:///`` or ``postgresql://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        path = url.split("://", 1)[1][1:]  # sqlite:///relative or sqlite:////absolute
        options: dict[str, typing.Any] = {"timeout": 20}  # seconds to wait for the write lock
        if django.VERSION >= (5, 1):
            # Transactions take the write lock when they begin, so one that reads and then writes
            # never finds that a saga committed in between ("database is locked").
            options["transaction_mode"] = "IMMEDIATE"
        name = str(BASE_DIR / path) if path else ""
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": options}
    if scheme in ("postgresql", "postgres"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": urllib.parse.unquote(parsed.path.lstrip("/")),
            "USER": urllib.parse.unquote(parsed.username or ""),
            "PASSWORD": urllib.parse.unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
        }
    raise ValueError(f"DATABASE_URL {url!r}: use sqlite:///file or postgresql://user:password@host/name")


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-orders-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in ("1", "true", "yes")
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "cqrs.integrations.django",  # reads CQRS_SAGA; adds saga_worker, saga_list, saga_check
    "orders",
]

MIDDLEWARE = [
    "cqrs.integrations.django.CorrelationIdMiddleware",  # correlation ids; problem details for Problem errors
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

CQRS_SAGA: dict[str, typing.Any] = {
    # Sagas live in DATABASES["default"] unless STORAGE_URL says otherwise.
    "SAGAS": ["orders.sagas.OrderSaga"],
    "CONTAINER": "orders.sagas.build_container",
    "CORRELATION_HEADER": "X-Correlation-ID",
    "COMPENSATION_RETRY_COUNT": 3,
    "COMPENSATION_RETRY_DELAY": 0.2,
    "LEASE_SECONDS": 30,
    "LOGGING": True,
}
if os.environ.get("CQRS_SAGA_STORAGE_URL"):
    CQRS_SAGA["STORAGE_URL"] = os.environ["CQRS_SAGA_STORAGE_URL"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "cqrs.correlation.CorrelationIdFilter"}},
    "formatters": {
        "traced": {"format": "%(asctime)s %(levelname)-7s [%(correlation_id)s] %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "traced", "filters": ["correlation"]},
    },
    "loggers": {
        "orders": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "cqrs": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
