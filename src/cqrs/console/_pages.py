"""The console's HTML: the saga list and one saga's page, escaped throughout, no JavaScript but Mermaid's."""

from __future__ import annotations

import datetime
import html
import json
import urllib.parse

from cqrs.saga.operations import OPERATOR_STEP
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord

__all__ = ["detail_page", "list_page", "message_page"]

AGES = [("", "any age"), ("300", "older than 5 min"), ("3600", "older than 1 h"), ("86400", "older than 1 day"),
        ("604800", "older than 7 days")]
#: Action name -> (button label, needs a step, needs a note).
ACTION_FORMS: dict[str, tuple[str, bool, bool]] = {
    "retry": ("Retry compensations", False, False),
    "resolve": ("Resolve by hand", False, True),
    "skip": ("Skip a compensation", True, True),
    "rerun": ("Re-run from the failed step", True, False),
    "recover": ("Recover now", False, False),
    "reset": ("Reset", False, False),
    "park": ("Park", False, False),
}


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _age(now: datetime.datetime, then: datetime.datetime | None) -> str:
    if then is None:
        return "?"
    seconds = max(int((now - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _layout(base: str, title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{e(base)}/static/console.css"></head>
<body><header><a href="{e(base)}/" class="home">Sagas</a></header><main>{body}</main></body></html>"""


def _status(status: SagaStatus) -> str:
    return f'<span class="status status-{e(status.value)}">{e(status.value)}</span>'


def list_page(
    base: str,
    records: list[SagaRecord],
    now: datetime.datetime,
    filters: dict[str, str],
    next_cursor: str | None,
    message: str = "",
) -> str:
    """The saga list, newest filters applied, with a link to the next page."""
    options = "".join(
        f'<option value="{e(s.value)}"{" selected" if filters.get("status") == s.value else ""}>{e(s.value)}</option>'
        for s in SagaStatus
    )
    ages = "".join(
        f'<option value="{e(v)}"{" selected" if filters.get("older_than", "") == v else ""}>{e(label)}</option>'
        for v, label in AGES
    )
    rows = "".join(
        f'<tr data-saga-id="{e(r.saga_id)}"><td><a class="saga-link" href="{e(base)}/sagas/{e(r.saga_id)}">'
        f"{e(r.saga_id)}</a></td><td>{e(r.name)}</td><td>{_status(r.status)}</td>"
        f'<td title="{e(r.created_at.isoformat() if r.created_at else "")}">{_age(now, r.created_at)}</td>'
        f"<td>{_age(now, r.updated_at)}</td><td>{e(r.recovery_attempts)}</td><td>{e(r.correlation_id or '')}</td></tr>"
        for r in records
    ) or '<tr><td colspan="7" class="empty">No saga matches.</td></tr>'
    more = ""
    if next_cursor:
        query = urllib.parse.urlencode({**{k: v for k, v in filters.items() if v}, "after": next_cursor})
        more = f'<p><a class="next" href="{e(base)}/?{e(query)}">Next page</a></p>'
    notice = f'<p class="notice">{e(message)}</p>' if message else ""
    body = f"""<h1>Sagas</h1>{notice}
<form class="filters" method="get" action="{e(base)}/">
<input type="search" name="q" placeholder="saga id or correlation id" aria-label="search"
 value="{e(filters.get('q', ''))}">
<select name="status" aria-label="status"><option value="">any status</option>{options}</select>
<input type="text" name="name" placeholder="saga name" value="{e(filters.get('name', ''))}" aria-label="name">
<select name="older_than" aria-label="age">{ages}</select>
<button type="submit">Filter</button></form>
<table class="sagas"><thead><tr><th>saga id</th><th>name</th><th>status</th><th>age</th><th>idle</th>
<th>attempts</th><th>correlation id</th></tr></thead><tbody>{rows}</tbody></table>{more}"""
    return _layout(base, "Sagas", body)


def detail_page(
    base: str,
    record: SagaRecord,
    history: list[SagaLogEntry],
    now: datetime.datetime,
    diagram: str,
    actions: dict[str, str | None],
    allowed_to_act: bool,
    defaults: dict[str, str],
    message: str = "",
    error: str = "",
) -> str:
    """One saga: facts, errors, the run as a Mermaid diagram, the step timeline, the context, and actions."""
    lease = "none"
    if record.owner and record.lease_expires_at:
        state = "live" if record.lease_expires_at > now else "expired"
        lease = f"{state} until {record.lease_expires_at.isoformat(timespec='seconds')} (owner {record.owner})"
    facts = [
        ("status", _status(record.status)),
        ("saga", e(f"{record.name} (definition version {record.definition_version})")),
        ("correlation id", e(record.correlation_id or "-")),
        ("created", e(record.created_at.isoformat(timespec="seconds") if record.created_at else "?")),
        ("updated", e(record.updated_at.isoformat(timespec="seconds") if record.updated_at else "?")),
        ("lease", e(lease)),
        ("recovery attempts", e(record.recovery_attempts)),
    ]
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    errors = [entry for entry in history if entry.status == SagaStepStatus.FAILED]
    error_items = "".join(
        f"<li><b>{e(x.step_name)}</b> ({e(x.action)}, {e(x.timestamp.isoformat(timespec='seconds'))}): "
        f"{e(x.details or '')}</li>"
        for x in errors
    )
    errors_html = (
        f'<section class="errors"><h2>Errors</h2><p class="saga-error">{e(record.error)}</p><ul>{error_items}</ul>'
        "</section>" if record.error or errors else ""
    )
    timeline = "".join(
        f'<tr class="{"operator" if x.step_name == OPERATOR_STEP else "step-" + e(x.status.value)}">'
        f"<td>{e(x.seq)}</td><td>{e(x.timestamp.isoformat(timespec='milliseconds'))}</td><td>{e(x.step_name)}</td>"
        f"<td>{e(x.action)}</td><td>{e(x.status.value)}</td><td>{e(x.details or '')}</td></tr>"
        for x in history
    ) or '<tr><td colspan="6" class="empty">No step has run yet.</td></tr>'
    notice = f'<p class="notice">{e(message)}</p>' if message else ""
    problem = f'<p class="problem" role="alert">{e(error)}</p>' if error else ""
    body = f"""<h1>Saga <code>{e(record.saga_id)}</code></h1>{notice}{problem}
<dl class="facts">{dl}</dl>{errors_html}
<section><h2>The run</h2><pre class="mermaid" id="diagram">{e(diagram)}</pre></section>
<section><h2>Step timeline</h2><table class="timeline"><thead><tr><th>#</th><th>at</th><th>step</th><th>action</th>
<th>status</th><th>details</th></tr></thead><tbody>{timeline}</tbody></table></section>
<section><h2>Context</h2><pre class="context">{e(json.dumps(record.context, indent=2, sort_keys=True))}</pre></section>
{_actions(base, record, actions, allowed_to_act, defaults)}
<script src="{e(base)}/static/mermaid.min.js"></script>
<script src="{e(base)}/static/console.js"></script>"""
    return _layout(base, f"Saga {record.saga_id}", body)


def _actions(
    base: str, record: SagaRecord, actions: dict[str, str | None], allowed_to_act: bool, defaults: dict[str, str]
) -> str:
    if not allowed_to_act:
        return '<section class="actions"><h2>Actions</h2><p class="read-only">Read-only: actions are not ' \
               "authorized for you.</p></section>"
    forms = []
    for action, (label, needs_step, needs_note) in ACTION_FORMS.items():
        reason = actions.get(action)
        if reason is not None:
            forms.append(f'<li><button disabled title="{e(reason)}">{e(label)}</button> '
                         f'<small class="why">{e(reason)}</small></li>')
            continue
        step = (f'<input name="step" aria-label="step" placeholder="step" value="{e(defaults.get(action, ""))}" '
                "required>") if needs_step else ""
        note = "" if action == "recover" else (
            f'<input name="note" aria-label="note" placeholder="note"{" required" if needs_note else ""}>'
        )
        forms.append(
            f'<li><form method="post" action="{e(base)}/sagas/{e(record.saga_id)}/actions/{e(action)}">{step}{note}'
            f'<button type="submit" data-action="{e(action)}">{e(label)}</button></form></li>'
        )
    return f'<section class="actions"><h2>Actions</h2><ul>{"".join(forms)}</ul></section>'


def message_page(base: str, status: int, text: str) -> str:
    """A page for an error (unknown saga, forbidden action)."""
    return _layout(base, str(status), f'<h1>{e(status)}</h1><p class="problem">{e(text)}</p>')
