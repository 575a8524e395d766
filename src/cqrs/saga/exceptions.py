"""Errors raised by the saga engine and its storages."""

from __future__ import annotations

import uuid

from cqrs.dispatcher.exceptions import SagaConcurrencyError as _SagaConcurrencyError
from cqrs.dispatcher.exceptions import SagaDoesNotExist

__all__ = [
    "ContextDeserializationError",
    "ContextSerializationError",
    "ContextValidationError",
    "SagaAlreadyRunningError",
    "SagaCompensatedError",
    "SagaConcurrencyError",
    "SagaDeadlineExceededError",
    "SagaDefinitionError",
    "SagaError",
    "SagaIdConflictError",
    "SagaNotBoundError",
    "SagaNotFoundError",
    "SagaNotRunnableError",
    "SagaOwnershipLostError",
    "SagaStepTimeoutError",
    "StepContractError",
    "UnknownSagaError",
]


class SagaError(Exception):
    """Base class of every error this library raises on its own account."""


class SagaDefinitionError(SagaError, TypeError):
    """A `Saga` or step class is declared wrongly (raised when the class is defined)."""


class SagaNotBoundError(SagaError, SagaDoesNotExist, KeyError):
    """No saga is bound to this context type in the `SagaMap`."""

    def __init__(self, context_type: type) -> None:
        self.context_type = context_type
        super().__init__(
            f"No saga is bound to context type {context_type.__module__}.{context_type.__qualname__}; "
            f"call mapper.bind({context_type.__qualname__}, YourSaga) in the sagas_mapper "
            "passed to bootstrap()"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownSagaError(SagaError, LookupError):
    """A stored saga names a saga (or version) the registry does not know."""


class SagaNotFoundError(SagaError, LookupError, ValueError):
    """No saga with this id is stored (a `ValueError` too, as python-cqrs raises)."""

    def __init__(self, saga_id: uuid.UUID) -> None:
        self.saga_id = saga_id
        super().__init__(f"No saga with id {saga_id} is stored")


class ContextSerializationError(SagaError, TypeError):
    """A saga context (or step response) cannot be turned into JSON."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ContextValidationError(SagaError, ValueError):
    """Outside input (a request body, an event) does not make a valid context.

    ``problems`` lists ``{"field", "message"}`` for each bad field.
    """

    def __init__(self, message: str, problems: list[dict[str, str]]) -> None:
        self.problems = problems
        super().__init__(message)


class ContextDeserializationError(SagaError, ValueError):
    """A stored context no longer fits its context type (for example after a deploy)."""

    def __init__(self, message: str, *, saga_id: uuid.UUID | None, fields: tuple[str, ...]) -> None:
        self.saga_id = saga_id
        self.fields = fields
        super().__init__(message)


class SagaAlreadyRunningError(SagaError, RuntimeError):
    """Another runner holds this saga's lease right now."""

    def __init__(self, saga_id: uuid.UUID) -> None:
        self.saga_id = saga_id
        super().__init__(
            f"Saga {saga_id} is being run by another runner (its lease has not expired)"
        )


class SagaOwnershipLostError(SagaError, RuntimeError):
    """This runner's lease was taken over; it stopped without writing anything more."""

    def __init__(self, saga_id: uuid.UUID) -> None:
        self.saga_id = saga_id
        super().__init__(
            f"Lost ownership of saga {saga_id}: another runner took it over after the lease "
            "expired; this runner stopped without writing"
        )


class SagaCompensatedError(SagaError, RuntimeError):
    """A recovered saga ended compensated rather than completed.

    A `RuntimeError`, so code written for python-cqrs's `recover_saga` keeps
    working; for a saga taken up while compensating (``resumed_from``) the
    message is python-cqrs's ("... was recovered in compensating state ...").
    """

    def __init__(self, saga_id: uuid.UUID, status: str, error: str | None, *, resumed_from: str | None = None) -> None:
        self.saga_id = saga_id
        self.status = status
        self.error = error
        self.resumed_from = resumed_from
        if resumed_from is None:
            message = f"Saga {saga_id} ended {status} after compensation: {error}"
        else:
            message = (
                f"Saga {saga_id} was recovered in {resumed_from} state and compensation was completed. "
                f"Forward execution is not allowed. (It ended {status}; the step error: {error})"
            )
        super().__init__(message)


class SagaStepTimeoutError(SagaError, TimeoutError):
    """A step's `act` ran longer than its timeout; counts as a step failure."""


class SagaDeadlineExceededError(SagaError, TimeoutError):
    """The saga ran past its deadline; counts as a step failure."""


class StepContractError(SagaError, TypeError):
    """A step broke its contract (for example `act` did not return a `SagaStepResult`)."""


class SagaNotRunnableError(SagaError, RuntimeError):
    """The saga is parked (or otherwise final) and will not run until an operator resets it."""

    def __init__(self, saga_id: uuid.UUID, status: str, error: str | None) -> None:
        self.saga_id = saga_id
        self.status = status
        self.error = error
        super().__init__(f"Saga {saga_id} is {status} and will not run ({error}); reset it to retry")


class SagaConcurrencyError(SagaError, _SagaConcurrencyError, RuntimeError):
    """A write expected the saga at one version and found it at another.

    It is `cqrs.dispatcher.exceptions.SagaConcurrencyError` (python-cqrs's name) too.
    """


class SagaIdConflictError(SagaError, ValueError):
    """A saga id is already used by a different saga."""
