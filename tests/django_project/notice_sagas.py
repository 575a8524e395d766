"""A saga whose step emits a domain event, and what observes every run: for the start-path tests.

`RECORDER` (a run hook) and `HANDLED` (what the event handler saw) are
module state the tests clear; the Django test project reads `event_map` and
`hooks` from ``CQRS_SAGA["EVENT_MAP"]`` / ``["HOOKS"]``.
"""

from __future__ import annotations

import dataclasses
import threading
import typing

import cqrs
from cqrs import correlation
from cqrs.saga.hooks import RunInfo, SagaHook
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus
from cqrs.triggers import trigger

_lock = threading.Lock()
#: (event text, correlation id seen by the handler)
HANDLED: list[tuple[str, str | None]] = []


@dataclasses.dataclass(frozen=True)
class Noticed:
    text: str


@dataclasses.dataclass
class NoticeContext(SagaContext):
    text: str


class Notify(SagaStepHandler[NoticeContext, cqrs.Response]):
    name = "notify"

    def __init__(self) -> None:
        self._events: list[object] = []

    async def act(self, context: NoticeContext) -> SagaStepResult[NoticeContext, cqrs.Response]:
        self._events.append(Noticed(context.text))
        return self._generate_step_result(cqrs.Response())


class NoticeSaga(Saga[NoticeContext]):
    name = "notice"
    steps = [Notify]

    @trigger(source="notice", idempotency_key="text")
    def from_notice(self, event: dict[str, typing.Any]) -> NoticeContext:
        return NoticeContext(text=str(event["text"]))


class NoticedHandler:
    async def handle(self, event: Noticed) -> None:
        with _lock:
            HANDLED.append((event.text, correlation.get_correlation_id()))


class Recorder(SagaHook):
    """Records, per saga, the hook calls a run makes and the correlation id each saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def _add(self, kind: str, run: RunInfo) -> None:
        with _lock:
            self.calls.append((kind, str(run.saga_id), run.correlation_id))

    def saga_starting(self, run: RunInfo) -> dict[str, str] | None:
        self._add("starting", run)
        return {"traceparent": f"trace-of-{run.correlation_id}"}

    def saga_started(self, run: RunInfo) -> None:
        self._add("started", run)

    def saga_resumed(self, run: RunInfo) -> None:
        self._add("resumed", run)

    def saga_finished(self, run: RunInfo, status: SagaStatus, error: str | None) -> None:
        self._add(f"finished:{status.value}", run)

    def of(self, saga_id: object) -> list[tuple[str, str | None]]:
        with _lock:
            return [(kind, cid) for kind, sid, cid in self.calls if sid == str(saga_id)]


RECORDER = Recorder()


def reset() -> None:
    with _lock:
        HANDLED.clear()
        RECORDER.calls.clear()


def event_map() -> cqrs.EventMap:
    """``CQRS_SAGA["EVENT_MAP"]``."""
    events = cqrs.EventMap()
    events.bind(Noticed, NoticedHandler)
    return events


def hooks() -> list[object]:
    """``CQRS_SAGA["HOOKS"]``."""
    return [RECORDER]
