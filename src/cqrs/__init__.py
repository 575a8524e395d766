"""cqrs-saga: durable, typed sagas for Python.

The flat public surface; implementation lives in the submodules. Names are
also importable where python-cqrs (4 and 5) puts them, so its users' code
runs unchanged.
"""

from cqrs import bootstrap
from cqrs.config import SagaConfig
from cqrs.container import Container, DIContainer, ScopeStrategy, SupportsScope
from cqrs.events import (
    DCDomainEvent,
    DCEvent,
    DCNotificationEvent,
    DomainEvent,
    Event,
    EventEmitter,
    EventHandler,
    EventMap,
    IDomainEvent,
    IEvent,
    INotificationEvent,
    NotificationEvent,
    PydanticDomainEvent,
    PydanticEvent,
    PydanticNotificationEvent,
)
from cqrs.response import DCResponse, IResponse, PydanticResponse, Response
from cqrs.saga.exceptions import SagaError, SagaNotBoundError
from cqrs.saga.fallback import Fallback
from cqrs.saga.hooks import RunInfo, SagaEvent, SagaHook
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.mermaid import SagaMermaid
from cqrs.saga.models import ContextT, SagaContext
from cqrs.saga.recovery import RecoveryWorker, recover_saga
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.step import Resp, SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.memory import MemorySagaStorage
from cqrs.saga.storage.protocol import SagaStorage

__all__ = [
    "Container",
    "ContextT",
    "DCDomainEvent",
    "DCEvent",
    "DCNotificationEvent",
    "DCResponse",
    "DIContainer",
    "DomainEvent",
    "EngineSettings",
    "Event",
    "EventEmitter",
    "EventHandler",
    "EventMap",
    "Fallback",
    "IDomainEvent",
    "IEvent",
    "INotificationEvent",
    "IResponse",
    "MemorySagaStorage",
    "NotificationEvent",
    "PydanticDomainEvent",
    "PydanticEvent",
    "PydanticNotificationEvent",
    "PydanticResponse",
    "RecoveryWorker",
    "Resp",
    "Response",
    "RetryPolicy",
    "RunInfo",
    "Saga",
    "SagaConfig",
    "SagaContext",
    "SagaError",
    "SagaEvent",
    "SagaHook",
    "SagaMap",
    "SagaMediator",
    "SagaMermaid",
    "SagaNotBoundError",
    "SagaOutcome",
    "SagaStatus",
    "SagaStepHandler",
    "SagaStepResult",
    "SagaStepStatus",
    "SagaStorage",
    "ScopeStrategy",
    "SupportsScope",
    "bootstrap",
    "recover_saga",
]

__version__ = "0.1.0"
