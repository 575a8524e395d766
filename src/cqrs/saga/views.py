"""JSON-ready views of stored sagas, shared by the HTTP routes, the CLI and the console."""

from __future__ import annotations

import typing

from cqrs.saga.storage.enums import SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord

__all__ = ["saga_view"]


def saga_view(record: SagaRecord, history: list[SagaLogEntry]) -> dict[str, typing.Any]:
    """A stored saga as a dict of JSON values: status, steps completed (with responses), compensated, failed."""
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
        "saga_id": str(record.saga_id),
        "saga": record.name,
        "status": record.status.value,
        "correlation_id": record.correlation_id,
        "completed_steps": completed,
        "compensated_steps": compensated,
        "failed_step": failed[-1] if failed else None,
        "error": record.error,
        "context": record.context,
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "updated_at": record.updated_at.isoformat() if record.updated_at else None,
    }
