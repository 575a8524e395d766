"""Saga definitions: an ordered list of steps over one context type."""

from __future__ import annotations

import typing
import uuid

from cqrs.container.scope import ScopeStrategy
from cqrs.saga.exceptions import SagaDefinitionError
from cqrs.saga.fallback import Fallback
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.settings import DEFAULT_COMPENSATION_RETRY
from cqrs.saga.step import SagaStepHandler

__all__ = ["Saga", "SagaTransaction"]

ContextT = typing.TypeVar("ContextT")
if typing.TYPE_CHECKING:
    from cqrs.saga.mediator import SagaMediator
    from cqrs.saga.storage.protocol import SagaStorage
    from cqrs.saga.transaction import SagaTransaction

StepType = type[SagaStepHandler[typing.Any, typing.Any]]
SagaEntry = StepType | Fallback


class Saga(typing.Generic[ContextT]):
    """A saga: steps run in order, completed ones compensated in reverse on failure.

    Subclass with the context type and list the steps::

        class OrderSaga(Saga[OrderContext]):
            steps = [ReserveInventoryStep, ProcessPaymentStep]

    The definition is checked when the class is created: every step must be a
    `SagaStepHandler` subclass or a `Fallback`, typed for this context (or a
    base of it), and no step class may appear twice.

    Class attributes:

    - ``name``: stable name stored with each run (default: class name).
    - ``version``: definition version stored with each run.
    - ``deadline``: seconds from the saga's start after which no step may run;
      passing it counts as a step failure.
    - ``compensation_retry``: a `RetryPolicy` overriding the mediator's default.
    - ``rerun_failed``: an operator may run a ``failed`` saga of this class
      again from its failed step, when nothing of it was compensated (its
      first step failed); see `cqrs.saga.operations.SagaOperations.rerun`.
    """

    steps: typing.ClassVar[typing.Sequence[SagaEntry]] = ()
    name: typing.ClassVar[str]
    version: typing.ClassVar[int] = 1
    deadline: typing.ClassVar[float | None] = None
    compensation_retry: typing.ClassVar[RetryPolicy | None] = None
    rerun_failed: typing.ClassVar[bool] = False
    context_type: typing.ClassVar[type[typing.Any] | None] = None

    def __init_subclass__(cls, **kwargs: typing.Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        for base in getattr(cls, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Saga):
                (arg,) = typing.get_args(base)
                if isinstance(arg, type):
                    cls.context_type = arg
        if "steps" in cls.__dict__:
            cls.steps = tuple(cls.__dict__["steps"])
            _validate(cls)

    @property
    def steps_count(self) -> int:
        """How many entries ``steps`` has (python-cqrs's name)."""
        return len(self.steps)

    def transaction(
        self,
        context: ContextT,
        container: typing.Any,
        storage: SagaStorage,
        saga_id: uuid.UUID | None = None,
        compensation_retry_count: int = DEFAULT_COMPENSATION_RETRY.attempts,
        compensation_retry_delay: float = DEFAULT_COMPENSATION_RETRY.delay,
        compensation_retry_backoff: float = DEFAULT_COMPENSATION_RETRY.backoff,
        scope_strategy: ScopeStrategy = ScopeStrategy.NONE,
        *,
        mediator: SagaMediator | None = None,
    ) -> SagaTransaction[ContextT]:
        """Run this saga step by step (python-cqrs's API): ``async with ... as tx: async for r in tx``.

        See `cqrs.saga.transaction`; ``saga_id`` takes up a stored saga (or
        starts one with that id); ``mediator`` (keyword) builds the run with
        that mediator's hooks, event handlers and settings.
        """
        from cqrs.saga.transaction import SagaTransaction

        return SagaTransaction(
            self, context, container, storage, saga_id,
            compensation_retry_count, compensation_retry_delay, compensation_retry_backoff, scope_strategy,
            mediator=mediator,
        )

    @classmethod
    def step_types(cls) -> tuple[StepType, ...]:
        """Every step handler class the saga may run, fallbacks included."""
        found: list[StepType] = []
        for entry in cls.steps:
            found.extend(entry.step_types if isinstance(entry, Fallback) else (entry,))
        return tuple(found)

    @classmethod
    def step_by_name(cls, name: str) -> StepType | None:
        for step_type in cls.step_types():
            if step_type.name == name:
                return step_type
        return None

    @classmethod
    def entry_index(cls) -> dict[str, int]:
        """Step name to the position of its entry (a fallback shares its primary's)."""
        index: dict[str, int] = {}
        for position, entry in enumerate(cls.steps):
            for step_type in entry.step_types if isinstance(entry, Fallback) else (entry,):
                index[step_type.name] = position
        return index


def _validate(cls: type[Saga[typing.Any]]) -> None:
    where = f"Saga {cls.__qualname__}"
    if not cls.steps:
        raise SagaDefinitionError(f"{where} has no steps; list step handler classes in `steps`")
    seen_classes: set[StepType] = set()
    seen_names: dict[str, StepType] = {}
    for position, entry in enumerate(cls.steps):
        if isinstance(entry, Fallback):
            step_types: tuple[StepType, ...] = entry.step_types
        elif isinstance(entry, type) and issubclass(entry, SagaStepHandler):
            step_types = (entry,)
        else:
            raise SagaDefinitionError(
                f"{where}: steps[{position}] is {entry!r}; expected a SagaStepHandler subclass "
                "or a Fallback(...)"
            )
        for step_type in step_types:
            if step_type in seen_classes:
                raise SagaDefinitionError(
                    f"{where}: step {step_type.__qualname__} appears more than once; "
                    "each step class may be used once per saga"
                )
            seen_classes.add(step_type)
            other = seen_names.get(step_type.name)
            if other is not None:
                raise SagaDefinitionError(
                    f"{where}: steps {other.__qualname__} and {step_type.__qualname__} share the "
                    f"name {step_type.name!r}; give one a distinct `name`"
                )
            seen_names[step_type.name] = step_type
            step_context = step_type.context_type
            if (
                cls.context_type is not None
                and step_context is not None
                and not issubclass(cls.context_type, step_context)
            ):
                raise SagaDefinitionError(
                    f"{where} runs on {cls.context_type.__qualname__}, but step "
                    f"{step_type.__qualname__} expects {step_context.__qualname__}"
                )


# python-cqrs defines the transaction here; it lives in its own module (imported last: it needs `Saga`'s module loaded).
from cqrs.saga.transaction import SagaTransaction  # noqa: E402
