"""Saga and step statuses, stored as plain strings."""

from __future__ import annotations

import datetime
import enum
import typing

__all__ = ["SagaStatus", "SagaStepStatus"]


class SagaStatus(str, enum.Enum):
    """Where a saga stands.

    ``PENDING``: recorded, not yet picked up by a runner. ``RUNNING``: steps are
    going forward. ``COMPENSATING``: a step failed and completed steps are being
    undone; never runs forward again. ``COMPLETED``: every step succeeded.
    ``FAILED``: a step failed and every compensation succeeded.
    ``COMPENSATION_FAILED``: a compensation kept failing; recovery retries it.
    ``PARKED``: taken out of recovery (too many attempts, or by an operator).
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    PARKED = "parked"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.PARKED})

#: Statuses a runner may claim and advance.
RESUMABLE = frozenset(
    {SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED}
)


class SagaStepStatus(str, enum.Enum):
    """The outcome a step log entry records."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"

    def __str__(self) -> str:
        return self.value


def status_set(
    status: SagaStatus | typing.Collection[SagaStatus] | None,
) -> frozenset[SagaStatus] | None:
    """A `list_sagas` status filter as a set (None: any status); strings are read as statuses."""
    if status is None:
        return None
    if isinstance(status, (SagaStatus, str)):
        return frozenset({SagaStatus(status)})
    return frozenset(SagaStatus(s) for s in status)


def purge_filter(older_than: datetime.timedelta, status: SagaStatus | None) -> frozenset[SagaStatus]:
    """The statuses ``purge_sagas(older_than=..., status=...)`` deletes, after checking its arguments.

    By default sagas that ended on their own (``completed``, ``failed``); a parked saga only when
    asked for by name; never an unfinished one. A negative age is refused rather than read as
    "everything".
    """
    if older_than < datetime.timedelta(0):
        raise ValueError(f"purge_sagas needs an age of zero or more, got older_than={older_than}")
    if status is None:
        return frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED})
    status = SagaStatus(status)
    if not status.is_final:
        raise ValueError(
            f"purge_sagas deletes finished sagas (completed, failed or parked), not {status.value!r} ones"
        )
    return frozenset({status})
