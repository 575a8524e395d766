"""Settings of the test project (also usable as ``--settings django_project.settings`` in subprocesses).

``CQRS_DJANGO_TEST_DATABASE_URL`` picks the database of a subprocess; in the
test process the fixtures point ``DATABASES`` at each test's fresh database.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "django_app"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from config.settings import database_from_url  # noqa: E402  (the example's own helper)

SECRET_KEY = "cqrs-django-tests"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["cqrs.integrations.django", "orders"]
MIDDLEWARE = ["cqrs.integrations.django.CorrelationIdMiddleware"]
ROOT_URLCONF = "django_project.urls"

DATABASES = {
    "default": database_from_url(
        os.environ.get(
            "CQRS_DJANGO_TEST_DATABASE_URL",
            f"sqlite:///{pathlib.Path(tempfile.gettempdir()) / 'cqrs-django-placeholder.sqlite3'}",
        )
    )
}

CQRS_SAGA = {
    "SAGAS": [
        "orders.sagas.OrderSaga",
        "django_project.sagas.EchoSaga",
        "django_project.sagas.SlowSaga",
        "django_project.sagas.StubbornSaga",
    ],
    "CONTAINER": "orders.sagas.build_container",
    "COMPENSATION_RETRY_COUNT": 2,
    "COMPENSATION_RETRY_DELAY": 0.01,
    "LEASE_SECONDS": 5,
    "LOGGING": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # the rest of the suite's loggers keep working
    "handlers": {"recording": {"class": "django_project.logs.RecordingHandler"}},
    "loggers": {"django_project": {"handlers": ["recording"], "level": "INFO"}},
}
