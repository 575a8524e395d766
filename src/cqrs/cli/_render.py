"""How sagas look on a terminal (Rich tables and panels) and as JSON (``--json``)."""

from __future__ import annotations

import datetime
import json
import typing

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cqrs.cli._durations import format_age
from cqrs.saga.fallback import Fallback
from cqrs.saga.operations import OPERATOR_STEP
from cqrs.saga.saga import Saga
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord

__all__ = ["history_json", "record_json", "run_flow", "saga_detail", "saga_table"]

_STYLE = {
    SagaStatus.COMPLETED: "green",
    SagaStatus.FAILED: "yellow",
    SagaStatus.COMPENSATION_FAILED: "bold red",
    SagaStatus.PARKED: "magenta",
    SagaStatus.COMPENSATING: "yellow",
    SagaStatus.RUNNING: "cyan",
    SagaStatus.PENDING: "dim",
}


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def lease_state(record: SagaRecord, now: datetime.datetime) -> str:
    """``none``, ``live until ...`` or ``expired at ...``."""
    if record.owner is None or record.lease_expires_at is None:
        return "none"
    when = record.lease_expires_at.isoformat(timespec="seconds")
    return f"live until {when}" if record.lease_expires_at > now else f"expired at {when}"


def record_json(record: SagaRecord, now: datetime.datetime) -> dict[str, typing.Any]:
    """A saga record as JSON values (``--json``)."""
    return {
        "saga_id": str(record.saga_id),
        "name": record.name,
        "status": record.status.value,
        "definition_version": record.definition_version,
        "correlation_id": record.correlation_id,
        "owner": record.owner,
        "lease_expires_at": _iso(record.lease_expires_at),
        "lease_live": bool(record.owner and record.lease_expires_at and record.lease_expires_at > now),
        "lease_epoch": record.lease_epoch,
        "recovery_attempts": record.recovery_attempts,
        "error": record.error or None,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "context": record.context,
    }


def history_json(history: list[SagaLogEntry]) -> list[dict[str, typing.Any]]:
    """A saga's history as JSON values."""
    return [
        {
            "seq": e.seq,
            "at": e.timestamp.isoformat(),
            "step": e.step_name,
            "action": e.action,
            "status": e.status.value,
            "details": e.details,
            "response": e.response,
        }
        for e in history
    ]


def saga_table(records: list[SagaRecord], now: datetime.datetime) -> Table:
    """``cqrs-saga list``: one row per saga."""
    table = Table(show_lines=False, header_style="bold")
    for column in ("saga id", "name", "status", "age", "idle", "lease", "attempts", "correlation id"):
        table.add_column(column, no_wrap=column in ("saga id", "status"))
    for r in records:
        age = format_age(now - r.created_at) if r.created_at else "?"
        idle = format_age(now - r.updated_at) if r.updated_at else "?"
        lease = lease_state(r, now)
        table.add_row(
            str(r.saga_id), r.name, Text(r.status.value, style=_STYLE.get(r.status, "")), age, idle,
            "live" if lease.startswith("live") else ("expired" if lease.startswith("expired") else "-"),
            str(r.recovery_attempts), r.correlation_id or "",
        )
    return table


def run_flow(history: list[SagaLogEntry], saga_type: type[Saga[typing.Any]] | None = None) -> str:
    """The run as text: the steps forward with their outcome, then the compensations (newest first).

    With the saga's definition, steps the run has not reached show as ``not reached``.
    """
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    for e in history:
        if e.step_name == OPERATOR_STEP:
            continue
        if e.action == "act":
            forward[e.step_name] = {SagaStepStatus.COMPLETED: "completed", SagaStepStatus.FAILED: "failed"}.get(
                e.status, "running"
            )
        elif e.status in (SagaStepStatus.COMPENSATED, SagaStepStatus.FAILED):
            skipped = e.details is not None and e.details.startswith(("skipped", "compensated by hand"))
            backward[e.step_name] = (
                ("skipped" if e.details and e.details.startswith("skipped") else "by hand") if skipped
                else "compensated" if e.status == SagaStepStatus.COMPENSATED else "compensation failed"
            )
    names = list(forward) if saga_type is None else _step_names(saga_type, forward)
    steps = " -> ".join(f"{name} [{forward.get(name, 'not reached')}]" for name in names) or "(no step ran yet)"
    lines = [f"run:          {steps}"]
    if backward:
        order = [name for name in reversed(list(forward)) if name in backward]
        lines.append("compensation: " + " -> ".join(f"{name} [{backward[name]}]" for name in order))
    return "\n".join(lines)


def _step_names(saga_type: type[Saga[typing.Any]], reached: dict[str, str]) -> list[str]:
    """Each entry's step in definition order; a fallback too where it ran."""
    names: list[str] = []
    for entry in saga_type.steps:
        if isinstance(entry, Fallback):
            names.append(entry.step.name)
            if entry.fallback.name in reached:
                names.append(entry.fallback.name)
        else:
            names.append(entry.name)
    return names


def saga_detail(
    record: SagaRecord,
    history: list[SagaLogEntry],
    now: datetime.datetime,
    saga_type: type[Saga[typing.Any]] | None = None,
    mermaid: str | None = None,
) -> RenderableType:
    """``cqrs-saga show``: status, ownership, context, history, errors and the run as text."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("saga", f"{record.name} (definition version {record.definition_version})")
    facts.add_row("status", Text(record.status.value, style=_STYLE.get(record.status, "")))
    facts.add_row("owner", record.owner or "none")
    facts.add_row("lease", f"{lease_state(record, now)} (epoch {record.lease_epoch})")
    facts.add_row("recovery attempts", str(record.recovery_attempts))
    facts.add_row("correlation id", record.correlation_id or "-")
    facts.add_row("created", _iso(record.created_at) or "?")
    facts.add_row("updated", _iso(record.updated_at) or "?")
    if record.error:
        facts.add_row("error", Text(record.error, style="red"))
    steps = Table(header_style="bold")
    for column in ("#", "at", "step", "action", "status", "details"):
        steps.add_column(column)
    for e in history:
        style = "red" if e.status == SagaStepStatus.FAILED else ("dim" if e.step_name == OPERATOR_STEP else "")
        steps.add_row(
            str(e.seq), e.timestamp.isoformat(timespec="seconds"), e.step_name, e.action, e.status.value,
            e.details or "", style=style,
        )
    parts: list[RenderableType] = [
        Panel(facts, title=f"saga {record.saga_id}", expand=False),
        Panel(Syntax(json.dumps(record.context, indent=2, sort_keys=True), "json"), title="context", expand=False),
        steps,
        Panel(Text(run_flow(history, saga_type)), title="the run", expand=False),
    ]
    if mermaid is not None:
        parts.append(Panel(Text(mermaid.rstrip()), title="mermaid", expand=False))
    return Group(*parts)
