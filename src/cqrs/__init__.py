"""cqrs-saga: durable, typed sagas for Python.

The flat public surface; implementation lives in the submodules.
"""

from cqrs.container import Container
from cqrs.events import EventHandler, EventMap
from cqrs.response import Response
from cqrs.saga.exceptions import SagaError, SagaNotBoundError
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus

__all__ = [
    "Container",
    "EventHandler",
    "EventMap",
    "Response",
    "RetryPolicy",
    "Saga",
    "SagaContext",
    "SagaError",
    "SagaMap",
    "SagaMediator",
    "SagaNotBoundError",
    "SagaOutcome",
    "SagaStatus",
    "SagaStepHandler",
    "SagaStepResult",
]

__version__ = "0.1.0"
