"""Framework-agnostic status and diagram views of a stored saga."""

from __future__ import annotations

import typing
import uuid

from cqrs.integrations._requests import BadRequest
from cqrs.saga.map import SagaMap
from cqrs.saga.storage.models import SagaRecord
from cqrs.saga.storage.protocol import SagaStorage
from cqrs.saga.views import saga_view


async def saga_status(storage: SagaStorage, saga_id: uuid.UUID) -> dict[str, typing.Any]:
    """The stored state of a saga as a JSON-ready dict; 404 for an unknown id."""
    record = await storage.get_saga(saga_id)
    if record is None:
        raise BadRequest(404, f"No saga with id {saga_id}")
    history = await storage.get_history(saga_id) or []
    return saga_view(record, history)


def wants_json_diagram(fmt: str) -> bool:
    """The diagram routes' ``?format=``: ``text`` (or ``mermaid``) or ``json``; 422 for anything else."""
    if fmt not in ("text", "mermaid", "json"):
        raise BadRequest(422, f"format must be 'text' or 'json', got {fmt!r}")
    return fmt == "json"


async def saga_diagram(storage: SagaStorage, saga_map: SagaMap, saga_id: uuid.UUID) -> str:
    """Mermaid source of a saga run with its completed, compensated and failed steps marked."""
    return (await _run_diagram(storage, saga_map, saga_id))[1]


async def saga_diagram_document(storage: SagaStorage, saga_map: SagaMap, saga_id: uuid.UUID) -> dict[str, typing.Any]:
    """``{"saga_id", "status", "diagram"}``: the diagram with the status it was drawn at."""
    record, diagram = await _run_diagram(storage, saga_map, saga_id)
    return {"saga_id": str(saga_id), "status": record.status.value, "diagram": diagram}


async def _run_diagram(storage: SagaStorage, saga_map: SagaMap, saga_id: uuid.UUID) -> tuple[SagaRecord, str]:
    from cqrs.saga.mermaid import SagaMermaid

    record = await storage.get_saga(saga_id)
    if record is None:
        raise BadRequest(404, f"No saga with id {saga_id}")
    saga_type = saga_map.by_name(record.name)
    if saga_type is None:
        raise BadRequest(404, f"Saga {saga_id} is a {record.name!r}, which this application does not define")
    return record, SagaMermaid(saga_type).run_diagram(await storage.get_history(saga_id) or [])
