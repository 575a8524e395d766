"""Comparing what a saga did with what a test expected, in words a failing test can show."""

from __future__ import annotations

import typing

from cqrs.saga.storage.enums import SagaStatus
from cqrs.testing._recorder import SagaRecording

__all__ = ["check_saga", "event_matches"]


def event_matches(expected: object, actual: object) -> bool:
    """An expected class matches any instance of it; anything else must be equal."""
    if isinstance(expected, type):
        return isinstance(actual, expected)
    return expected == actual


def _names(events: typing.Sequence[object]) -> list[str]:
    return [e.__name__ if isinstance(e, type) else repr(e) for e in events]


def check_saga(
    recording: SagaRecording,
    stored: SagaStatus | None,
    *,
    status: object,
    steps: object,
    compensated: object,
    events: object,
    unset: object,
) -> list[str]:
    """The expectations that do not hold, one line each."""
    problems: list[str] = []
    if status is not unset:
        wanted = SagaStatus(status)
        if stored != wanted:
            got = stored.value if stored is not None else "not stored"
            problems.append(f"status: expected {wanted.value!r}, got {got!r}")
    if steps is not unset:
        wanted_steps = list(typing.cast("typing.Sequence[str]", steps))
        if wanted_steps != recording.steps_run:
            problems.append(f"steps run: expected {wanted_steps}, got {recording.steps_run}")
    if compensated is not unset:
        wanted_compensations = list(typing.cast("typing.Sequence[str]", compensated))
        if wanted_compensations != recording.compensations_run:
            problems.append(f"compensations run: expected {wanted_compensations}, got {recording.compensations_run}")
    if events is not unset:
        expected = list(typing.cast("typing.Sequence[object]", events))
        actual = recording.events
        if len(expected) != len(actual) or not all(map(event_matches, expected, actual)):
            problems.append(f"events: expected {_names(expected)}, got {[repr(e) for e in actual]}")
    return problems
