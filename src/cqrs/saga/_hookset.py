"""The hooks a run calls, sorted by method once, so a run calls only what a hook overrides."""

from __future__ import annotations

import typing

from cqrs.saga.hooks import SagaHook

__all__ = ["HOOK_METHODS", "HookSet", "call_hooks"]

HOOK_METHODS = (
    "saga_starting",
    "saga_started",
    "saga_resumed",
    "step_started",
    "attempt_started",
    "attempt_finished",
    "step_completed",
    "step_failed",
    "compensation_started",
    "step_compensated",
    "compensation_failed",
    "saga_finished",
    "lease_lost",
    "recovery_claimed",
    "saga_parked",
)

Method = typing.Callable[..., typing.Any]


def _overrides(hook: object, name: str) -> bool:
    if isinstance(hook, SagaHook):
        return getattr(type(hook), name) is not getattr(SagaHook, name)
    return callable(getattr(hook, name, None))  # a duck-typed hook: whatever it has


class HookSet:
    """The bound hook methods for each hook point; an empty tuple where no hook listens."""

    __slots__ = ("hooks", *HOOK_METHODS)

    def __init__(self, hooks: typing.Iterable[object] = ()) -> None:
        self.hooks: tuple[object, ...] = tuple(hooks)
        for name in HOOK_METHODS:
            setattr(self, name, tuple(getattr(h, name) for h in self.hooks if _overrides(h, name)))

    # Declared for the type checker; set in __init__.
    saga_starting: tuple[Method, ...]
    saga_started: tuple[Method, ...]
    saga_resumed: tuple[Method, ...]
    step_started: tuple[Method, ...]
    attempt_started: tuple[Method, ...]
    attempt_finished: tuple[Method, ...]
    step_completed: tuple[Method, ...]
    step_failed: tuple[Method, ...]
    compensation_started: tuple[Method, ...]
    step_compensated: tuple[Method, ...]
    compensation_failed: tuple[Method, ...]
    saga_finished: tuple[Method, ...]
    lease_lost: tuple[Method, ...]
    recovery_claimed: tuple[Method, ...]
    saga_parked: tuple[Method, ...]

    def plus(self, *extra: object) -> HookSet:
        """These hooks and ``extra`` after them."""
        return HookSet((*self.hooks, *extra)) if extra else self

    def __bool__(self) -> bool:
        return bool(self.hooks)


EMPTY = HookSet()


def call_hooks(methods: tuple[Method, ...], *args: typing.Any) -> typing.Awaitable[None] | None:
    """Call each method with ``args`` in order; an awaitable to await if one returned an awaitable, else None.

    A plain function, so hooks that return nothing (logging, metrics, listeners) cost no coroutine: the
    caller writes ``pending = call_hooks(...)`` and awaits ``pending`` only when it is not None. The
    methods after one that returned an awaitable run once it has been awaited.
    """
    for position, method in enumerate(methods):
        outcome = method(*args)
        if outcome is not None:
            return _rest(outcome, methods[position + 1 :], args)
    return None


async def _rest(first: typing.Awaitable[None], rest: tuple[Method, ...], args: tuple[typing.Any, ...]) -> None:
    await first
    for method in rest:
        outcome = method(*args)
        if outcome is not None:
            await outcome
