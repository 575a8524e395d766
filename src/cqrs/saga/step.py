"""Saga steps: the handler users write and the result it returns."""

from __future__ import annotations

import abc
import dataclasses
import typing
import uuid

from cqrs.saga.retry import RetryPolicy

__all__ = ["Resp", "SagaStepHandler", "SagaStepResult"]

ContextT = typing.TypeVar("ContextT")
#: A step's response type: a `Response` (or any pydantic model or dataclass), or None.
ResponseT = typing.TypeVar("ResponseT")
#: python-cqrs's name for the response type variable.
Resp = typing.TypeVar("Resp")


@dataclasses.dataclass(slots=True)
class SagaStepResult(typing.Generic[ContextT, ResponseT]):
    """What one completed step produced, as yielded by `SagaMediator.stream`.

    ``step_type`` is the step handler class that completed (for a `Fallback`,
    the primary or the fallback, whichever ran to completion), ``response`` its
    typed response (None for a step that returns none), and ``saga_id`` the
    saga it belongs to. ``replayed`` is true for results of steps completed in
    an earlier run of the same saga. ``with_error``, ``error_message``,
    ``error_traceback`` and ``error_type`` are python-cqrs's fields, carried
    as the step sets them; the engine reports failures by raising.
    """

    response: ResponseT
    step_type: type[SagaStepHandler[ContextT, ResponseT]]
    with_error: bool = False
    error_message: str | None = None
    error_traceback: list[str] | None = None
    error_type: type[Exception] | None = None
    saga_id: uuid.UUID | None = None
    replayed: bool = False


class SagaStepHandler(abc.ABC, typing.Generic[ContextT, ResponseT]):
    """One step of a saga: an action and the compensation that undoes it.

    Subclass it with the context and response types, implement `act` (change
    the context, return ``self._generate_step_result(response)``) and, if the
    action has an effect to undo, `compensate`. Instances are resolved from the
    DI container once per saga run, so `act`, `events` and `compensate` see the
    same instance.

    Class attributes tune a step:

    - ``name``: stable name used in storage and recovery (default: class name).
    - ``retry``: a `RetryPolicy` for `act` (default: no retry).
    - ``timeout``: seconds `act` may take; past it the step counts as failed.
    """

    name: typing.ClassVar[str]
    retry: typing.ClassVar[RetryPolicy | None] = None
    timeout: typing.ClassVar[float | None] = None
    response_type: typing.ClassVar[type[typing.Any] | None] = None
    context_type: typing.ClassVar[type[typing.Any] | None] = None

    def __init_subclass__(cls, **kwargs: typing.Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        elif not isinstance(cls.__dict__["name"], str) or not cls.__dict__["name"]:
            raise TypeError(f"{cls.__qualname__}.name must be a non-empty string")
        context_type, response_type = _generic_arguments(cls)
        if context_type is not None:
            cls.context_type = context_type
        if response_type is not None:
            cls.response_type = response_type

    @abc.abstractmethod
    async def act(self, context: ContextT) -> SagaStepResult[ContextT, ResponseT]:
        """Do the step's work; may change ``context``."""

    async def compensate(self, context: ContextT) -> None:
        """Undo what `act` did. The default does nothing."""

    @property
    def events(self) -> list[typing.Any]:
        """Domain events this step produced; handed to event handlers once the step is recorded."""
        return list(getattr(self, "_events", ()))

    def _generate_step_result(
        self,
        response: ResponseT,
        with_error: bool = False,
        error_message: str | None = None,
        error_traceback: list[str] | None = None,
        error_type: type[Exception] | None = None,
    ) -> SagaStepResult[ContextT, ResponseT]:
        """The result `act` returns: ``return self._generate_step_result(response)``."""
        if with_error:
            return SagaStepResult(response, type(self), with_error, error_message, error_traceback, error_type)
        return SagaStepResult(response, type(self))


def _generic_arguments(cls: type) -> tuple[type[typing.Any] | None, type[typing.Any] | None]:
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, SagaStepHandler):
            args = typing.get_args(base)
            if len(args) == 2:
                context_type = args[0] if isinstance(args[0], type) else None
                response_type = args[1] if isinstance(args[1], type) and args[1] is not type(None) else None
                return context_type, response_type
    return None, None
