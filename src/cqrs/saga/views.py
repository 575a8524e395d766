"""JSON-ready views of stored sagas, shared by the HTTP routes, the CLI and the console."""

from __future__ import annotations

import datetime
import typing

from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord

__all__ = ["history_view", "saga_summary", "saga_view"]


def _time(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def saga_summary(record: SagaRecord) -> dict[str, typing.Any]:
    """A stored saga without its steps: what a list of sagas shows.

    ``saga_id``, ``saga`` (its name), ``status``, ``correlation_id``,
    ``error``, ``created_at``, ``updated_at``, and who runs it: ``owner``
    (the runner holding its lease, None when free), ``lease_expires_at`` and
    ``recovery_attempts`` (how often recovery has claimed it).
    """
    return {
        "saga_id": str(record.saga_id),
        "saga": record.name,
        "status": record.status.value,
        "correlation_id": record.correlation_id,
        "error": record.error,
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
        "owner": record.owner,
        "lease_expires_at": _time(record.lease_expires_at),
        "recovery_attempts": record.recovery_attempts,
    }


def saga_view(record: SagaRecord, history: list[SagaLogEntry]) -> dict[str, typing.Any]:
    """A stored saga as a dict of JSON values: `saga_summary`'s fields, the context, and the
    steps completed (with responses), compensated and failed."""
    completed = [
        {"step": e.step_name, "response": e.response, "at": e.timestamp.isoformat()}
        for e in history
        if e.action == "act" and e.status == SagaStepStatus.COMPLETED
    ]
    compensated = [
        e.step_name for e in history if e.action == "compensate" and e.status == SagaStepStatus.COMPENSATED
    ]
    failed = [e.step_name for e in history if e.action == "act" and e.status == SagaStepStatus.FAILED]
    return {
        **saga_summary(record),
        "completed_steps": completed,
        "compensated_steps": compensated,
        "failed_step": failed[-1] if failed else None,
        "context": record.context,
    }


def history_view(history: list[SagaLogEntry]) -> list[dict[str, typing.Any]]:
    """A saga's step log in write order.

    Each entry: ``seq``, ``step``, ``action``, ``status``, ``at``, ``details``, ``response``.
    """
    return [
        {
            "seq": e.seq,
            "step": e.step_name,
            "action": e.action,
            "status": e.status.value,
            "at": e.timestamp.isoformat(),
            "details": e.details,
            "response": e.response,
        }
        for e in history
    ]
