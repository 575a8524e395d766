"""A step with a stand-in: run ``fallback`` when ``step`` fails."""

from __future__ import annotations

import dataclasses
import typing

from cqrs.adapters.circuit_breaker import CircuitBreaker
from cqrs.saga.step import SagaStepHandler

__all__ = ["Fallback"]


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A primary step and the step that replaces it when it fails.

    The fallback runs when ``step`` raises one of ``failure_exceptions`` (any
    exception if none are listed) or when its ``circuit_breaker`` is open.
    Context changes the failed primary made are undone before the fallback
    runs. Whichever of the two completes is the one recorded and, if the saga
    later fails, compensated.
    """

    step: type[SagaStepHandler[typing.Any, typing.Any]]
    fallback: type[SagaStepHandler[typing.Any, typing.Any]]
    failure_exceptions: tuple[type[BaseException], ...] = ()
    circuit_breaker: CircuitBreaker | None = None

    def __post_init__(self) -> None:
        for role in ("step", "fallback"):
            value = getattr(self, role)
            if not (isinstance(value, type) and issubclass(value, SagaStepHandler)):
                raise TypeError(
                    f"Fallback({role}=...) must be a SagaStepHandler subclass, got {value!r}"
                )
        if self.step is self.fallback:
            raise TypeError(f"Fallback step and fallback are the same class {self.step.__name__}")
        if not isinstance(self.failure_exceptions, tuple):
            object.__setattr__(self, "failure_exceptions", tuple(self.failure_exceptions))
        for exc_type in self.failure_exceptions:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"Fallback failure_exceptions must be exception types, got {exc_type!r}")

    def handles(self, error: BaseException) -> bool:
        """Whether ``error`` from the primary step should switch to the fallback."""
        return not self.failure_exceptions or isinstance(error, self.failure_exceptions)

    @property
    def step_types(self) -> tuple[type[SagaStepHandler[typing.Any, typing.Any]], ...]:
        return (self.step, self.fallback)
