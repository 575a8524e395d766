"""POST an order to the example, let its transaction commit, and die by SIGKILL before the saga runs.

Run as ``python kill_after_commit.py '<json body>'`` (cwd: the example) with
``DATABASE_URL`` set. The request goes through the example's real middleware
and view (Django's test client, in this process). The view's
``transaction.atomic()`` commits the order and its saga row; Django then calls
the on-commit callback `atomic_saga_start` registered, which would hand the
saga to this process's runner. Here that hand-off is the kill point: it prints
``COMMITTED <saga id>`` (the marker the test reads) and SIGKILLs the process,
so the saga is committed, ``pending``, and nobody is running it.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import uuid

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "django_app"
sys.path.insert(0, str(EXAMPLE))
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"

import django  # noqa: E402

django.setup()

from django.test import Client  # noqa: E402

from cqrs.integrations.django import _runtime  # noqa: E402


def die_after_commit(self: _runtime.DjangoSagas, saga_id: uuid.UUID) -> None:
    print(f"COMMITTED {saga_id}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


_runtime.DjangoSagas.hand_off = die_after_commit  # type: ignore[method-assign]

response = Client().post(
    "/orders", data=sys.argv[1], content_type="application/json", HTTP_X_CORRELATION_ID="killed-123"
)
print(f"still alive after the commit: {response.status_code} {response.content!r}", flush=True)
