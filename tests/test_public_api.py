"""The public surface: exactly these names, where the seed imports them.

Adding or removing a public name is a decision; this test makes it a visible one.
"""

from __future__ import annotations

import importlib

import cqrs

PUBLIC = {
    "cqrs": {
        "Container", "ContextT", "DCDomainEvent", "DCEvent", "DCNotificationEvent", "DCResponse", "DIContainer",
        "DomainEvent", "EngineSettings", "Event", "EventEmitter", "EventHandler", "EventMap", "Fallback",
        "IDomainEvent", "IEvent", "INotificationEvent", "IResponse", "MemorySagaStorage", "NotificationEvent",
        "PydanticDomainEvent", "PydanticEvent", "PydanticNotificationEvent", "PydanticResponse", "RecoveryWorker",
        "Resp", "Response", "RetryPolicy", "RunInfo", "Saga", "SagaConfig", "SagaContext", "SagaError", "SagaEvent",
        "SagaHook", "SagaMap", "SagaMediator", "SagaMermaid", "SagaNotBoundError", "SagaOutcome", "SagaStatus",
        "SagaStepHandler", "SagaStepResult", "SagaStepStatus", "SagaStorage", "ScopeStrategy", "SupportsScope",
        "bootstrap", "recover_saga",
    },
}

# Names the seed document imports from each module (they must keep working).
SEED_IMPORTS = {
    "cqrs.saga.bootstrap": ["bootstrap"],
    "cqrs.saga.saga": ["Saga"],
    "cqrs.saga.step": ["SagaStepHandler", "SagaStepResult"],
    "cqrs.saga.storage.memory": ["MemorySagaStorage"],
    "cqrs.saga.models": ["SagaContext"],
    "cqrs.response": ["Response"],
    "cqrs.saga.fallback": ["Fallback"],
    "cqrs.adapters.circuit_breaker": ["AioBreakerAdapter"],
    "cqrs.saga.recovery": ["recover_saga"],
    "cqrs.saga.storage.enums": ["SagaStatus"],
    "cqrs": ["SagaMap", "SagaMediator"],
}


# Every public module's ``__all__``, pinned: the integrations and storages are API too.
MODULE_ALL = {
    "cqrs.saga.bootstrap": {"bootstrap"},
    "cqrs.saga.saga": {"Saga", "SagaTransaction"},
    "cqrs.saga.step": {"Resp", "SagaStepHandler", "SagaStepResult"},
    "cqrs.saga.mediator": {"SagaMediator", "SagaOutcome"},
    "cqrs.saga.map": {"SagaMap"},
    "cqrs.saga.models": {"ContextT", "SagaContext"},
    "cqrs.saga.fallback": {"Fallback"},
    "cqrs.saga.retry": {"RetryPolicy"},
    "cqrs.saga.exceptions": {
        "ContextDeserializationError", "ContextSerializationError", "ContextValidationError",
        "SagaAlreadyRunningError", "SagaCompensatedError", "SagaConcurrencyError", "SagaDeadlineExceededError",
        "SagaDefinitionError", "SagaError", "SagaIdConflictError", "SagaNotBoundError", "SagaNotFoundError",
        "SagaNotRunnableError", "SagaOwnershipLostError", "SagaStepTimeoutError", "StepContractError",
        "UnknownSagaError",
    },
    "cqrs.saga.mermaid": {"SagaMermaid"},
    "cqrs.saga.recovery": {"RecoveryWorker", "recover_saga"},
    "cqrs.saga.hooks": {"Listener", "ListenerHook", "RunInfo", "SagaEvent", "SagaHook"},
    "cqrs.saga.settings": {"DEFAULT_COMPENSATION_RETRY", "EngineSettings"},
    "cqrs.saga.transaction": {"SagaTransaction"},
    "cqrs.saga.views": {"history_view", "saga_summary", "saga_view"},
    "cqrs.saga.storage": {
        "ISagaStorage", "Lease", "SagaLogEntry", "SagaRecord", "SagaStatus", "SagaStepStatus", "SagaStorage",
    },
    "cqrs.saga.storage.enums": {"SagaStatus", "SagaStepStatus"},
    "cqrs.saga.storage.memory": {"MemorySagaStorage"},
    "cqrs.saga.storage.models": {"Lease", "NewSaga", "SagaClaim", "SagaLogEntry", "SagaRecord", "StepEntry"},
    "cqrs.saga.storage.protocol": {"ISagaStorage", "SagaEngineStorage", "SagaOperatorStorage", "SagaStorage"},
    "cqrs.saga.storage.compat": {"PythonCqrsStorageMethods"},
    "cqrs.saga.storage.sqlalchemy": {
        "SCHEMA_VERSION", "Base", "SchemaError", "SchemaReport", "SqlAlchemySagaStorage", "saga_executions",
        "saga_log", "saga_outbox", "saga_schema",
    },
    "cqrs.saga.apps": {"AppError", "load_object", "mediator_from", "resolve", "saga_map_of"},
    "cqrs.cli": {"ExitCode", "main"},
    "cqrs.console": {"Authorize", "ConsoleRequest", "SagaConsole", "WSGIConsole", "dispatch", "read_only"},
    "cqrs.saga.operations": {
        "ACTIONS", "OPERATOR_STEP", "ActionResult", "OperationRefusedError", "SagaLeasedError", "SagaOperations",
    },
    "cqrs.outbox": {
        "OutboxMessage", "OutboxRecord", "OutboxRelay", "OutboxStatus", "OutboxStorage", "RelayWaker",
        "outbox_message", "run_relay",
    },
    "cqrs.outbox.models": {"OutboxMessage", "OutboxRecord", "OutboxStatus"},
    "cqrs.outbox.protocol": {"OutboxStorage"},
    "cqrs.outbox.messages": {
        "HEADER_CORRELATION_ID", "HEADER_EVENT_NAME", "HEADER_MESSAGE_ID", "HEADER_SAGA_ID", "outbox_message",
    },
    "cqrs.outbox.relay": {"DEFAULT_RELAY_RETRY", "OutboxRelay", "RelayWaker", "broker_message"},
    "cqrs.outbox.runner": {"BrokerSource", "load_object", "open_broker", "run_relay"},
    "cqrs.outbox.cli": {"add_relay_arguments", "main", "relay_from_arguments"},
    "cqrs.outbox.memory": {"MemoryOutbox"},
    "cqrs.response": {"DCResponse", "IResponse", "PydanticResponse", "Response"},
    "cqrs.container": {"Container", "DIContainer", "ScopeStrategy", "SupportsScope", "as_container"},
    "cqrs.container.protocol": {"Container", "SupportsScope"},
    "cqrs.container.di": {"DIContainer"},
    "cqrs.container.scope": {"ScopeStrategy"},
    "cqrs.container.dishka": {"DishkaCQRSContainer"},
    "cqrs.container.dependency_injector": {"DependencyInjectorCQRSContainer"},
    "cqrs.events": {
        "DCDomainEvent", "DCEvent", "DCNotificationEvent", "DomainEvent", "Event", "EventDispatchHook",
        "EventDispatcher", "EventEmitter", "EventHandler", "EventMap", "IDomainEvent", "IEvent", "INotificationEvent",
        "NotificationEvent", "PydanticDomainEvent", "PydanticEvent", "PydanticNotificationEvent",
    },
    "cqrs.events.event": {
        "DCDomainEvent", "DCEvent", "DCNotificationEvent", "DEFAULT_OUTPUT_TOPIC", "DomainEvent", "Event",
        "IDomainEvent", "IEvent", "INotificationEvent", "NotificationEvent", "PydanticDomainEvent", "PydanticEvent",
        "PydanticNotificationEvent",
    },
    "cqrs.events.event_handler": {"EventHandler"},
    "cqrs.events.map": {"EventMap"},
    "cqrs.events.event_emitter": {"EventEmitter", "notification_message"},
    "cqrs.events.dispatch": {"EventDispatchHook", "EventDispatcher"},
    "cqrs.message_brokers": {"DevnullMessageBroker", "Message", "MessageBroker"},
    "cqrs.message_brokers.protocol": {"Message", "MessageBroker"},
    "cqrs.message_brokers.devnull": {"DevnullMessageBroker"},
    "cqrs.message_brokers.consumer": {
        "Handler", "Received", "Rejected", "Settlement", "Subscription", "consume", "settle",
    },
    "cqrs.message_brokers.rabbitmq": {"RabbitMQBroker", "RabbitMQSubscription"},
    "cqrs.message_brokers.redis": {"RedisStreamSubscription", "RedisStreamsBroker"},
    "cqrs.message_brokers.nats": {"NatsJetStreamBroker", "NatsSubscription", "ensure_stream"},
    "cqrs.inbox": {"Inbox", "InboxHandler", "MemoryInbox", "MemoryInboxTransaction", "idempotent"},
    "cqrs.inbox.protocol": {"Inbox"},
    "cqrs.inbox.memory": {"MemoryInbox", "MemoryInboxTransaction"},
    "cqrs.inbox.handler": {"InboxHandler", "idempotent"},
    "cqrs.inbox.sqlalchemy": {"SqlAlchemyInbox", "inbox_metadata", "inbox_table"},
    "cqrs.dispatcher.exceptions": {
        "RequestHandlerDoesNotExist", "RequestHandlerTypeError", "SagaConcurrencyError", "SagaDoesNotExist",
    },
    "cqrs.bootstrap": {"bootstrap", "saga"},
    "cqrs.bootstrap.saga": {"DEFAULT_MESSAGE_BROKER", "bootstrap"},
    "cqrs.handlers": {"EventHandler", "Resp", "SagaStepHandler", "SagaStepResult"},
    "cqrs.handlers.saga": {"Resp", "SagaStepHandler", "SagaStepResult"},
    "cqrs.handlers.event": {"EventHandler"},
    "cqrs.mermaid": {"SagaMermaid"},
    "cqrs.mermaid.saga": {"SagaMermaid"},
    "cqrs.mapping": {"EventMap", "SagaMap"},
    "cqrs.mapping.requests": {"SagaMap"},
    "cqrs.mapping.events": {"EventMap"},
    "cqrs.mediators": {"SagaMediator"},
    "cqrs.mediators.saga": {"SagaMediator"},
    "cqrs.models": {
        "DCDomainEvent", "DCEvent", "DCNotificationEvent", "DCResponse", "DEFAULT_OUTPUT_TOPIC", "DomainEvent",
        "Event", "IDomainEvent", "IEvent", "INotificationEvent", "IResponse", "NotificationEvent",
        "PydanticDomainEvent", "PydanticEvent", "PydanticNotificationEvent", "PydanticResponse", "Response",
    },
    "cqrs.models.event": {
        "DCDomainEvent", "DCEvent", "DCNotificationEvent", "DEFAULT_OUTPUT_TOPIC", "DomainEvent", "Event",
        "IDomainEvent", "IEvent", "INotificationEvent", "NotificationEvent",
    },
    "cqrs.models.response": {"DCResponse", "IResponse", "PydanticResponse", "Response"},
    "cqrs.models.pydantic": {
        "PydanticDomainEvent", "PydanticEvent", "PydanticNotificationEvent", "PydanticResponse",
    },
    "cqrs.requests.map": {"SagaMap"},
    "cqrs.mediator": {"SagaMediator"},
    "cqrs.correlation": {"CorrelationIdFilter", "get_correlation_id", "new_correlation_id", "set_correlation_id"},
    "cqrs.config": {"SagaConfig", "configure", "get_config"},
    "cqrs.triggers": {
        "AcceptedEvent", "AttemptsExhaustedError", "EventRejectedError", "TRIGGER_NAMESPACE", "TriggerError",
        "TriggerRouter", "TriggerSpec", "TriggeredSaga", "UnknownSourceError", "derive_saga_id", "trigger",
        "triggers_of",
    },
    "cqrs.integrations.webhooks": {"SignatureVerifier", "TriggerDispatcher"},
    "cqrs.integrations.brokers": {"BrokerTriggers"},
    "cqrs.telemetry": {"default_hooks", "tracing_available"},
    "cqrs.telemetry.logs": {"LOGGER_NAMES", "LogHook", "saga_fields"},
    "cqrs.telemetry.tracing": {
        "TRACER_NAME", "RunTracingHook", "TracingHook", "propagation_headers", "tracer_provider_configured",
    },
    "cqrs.telemetry.metrics": {"SagaMetrics", "asgi_app", "django_view", "flask_view", "render", "wsgi_app"},
    "cqrs.testing": {
        "Attempt", "FakeClock", "FakeSleep", "InjectedFault", "SagaHarness", "SagaRecording", "SimulatedCrash",
    },
    "cqrs.adapters.circuit_breaker": {"AioBreakerAdapter", "CircuitBreaker", "CircuitOpenError"},
    "cqrs.adapters.di": {"DIContainer"},
    "cqrs.integrations.fastapi": {
        "OperatorAction", "Problem", "Runtime", "SagaContextMiddleware", "SagaResult", "SagaRuntime",
        "SagaStillRunning", "create_lifespan", "get_config", "get_mediator", "get_runtime", "get_storage", "init_app",
        "list_sagas", "operator_routes", "read_saga_context", "run_saga", "saga_context", "saga_diagram",
        "saga_event_stream", "saga_history", "saga_lifespan", "saga_status", "start_saga", "webhook_routes",
    },
    "cqrs.integrations.flask": {
        "OperatorAction", "Problem", "SagaExtension", "SagaResult", "SagaStillRunning", "alist_sagas", "arun_saga",
        "asaga_diagram", "asaga_history", "asaga_status", "astart_saga", "list_sagas", "operator_routes",
        "read_saga_context", "run_saga", "saga_diagram", "saga_event_stream", "saga_history", "saga_status",
        "start_saga", "wait_for_sagas", "webhook_routes",
    },
    "cqrs.integrations.django": {
        "CorrelationIdMiddleware", "OperatorAction", "Problem", "SagaResult", "SagaStillRunning", "alist_sagas",
        "arun_saga", "asaga_diagram", "asaga_history", "asaga_status", "astart_saga", "atomic_saga_start",
        "get_saga_config", "list_sagas", "operator_routes", "problem_response", "read_json", "read_saga_context",
        "run_saga", "saga_diagram", "saga_event_stream", "saga_history", "saga_status", "setup", "shutdown",
        "start_saga", "start_saga_on_commit", "wait_for_sagas",
    },
    "cqrs.integrations.django.transaction": {
        "atomic_saga_start", "create_saga_tables", "drop_saga_tables", "prepare_sqlite_connection",
        "start_saga_on_commit",
    },
    "cqrs.integrations.django.middleware": {"CorrelationIdMiddleware"},
    "cqrs.integrations.django.webhooks": {"SETTING", "urlpatterns", "webhook_routes"},
}


# Names a module makes when first read: Django's webhook URLconf reads its settings then.
LAZY = {("cqrs.integrations.django.webhooks", "urlpatterns")}


def test_every_public_module_exports_exactly_its_pinned_names() -> None:
    for module_name, names in MODULE_ALL.items():
        module = importlib.import_module(module_name)
        assert set(module.__all__) == names, module_name
        for name in names:
            if (module_name, name) in LAZY:
                continue
            assert hasattr(module, name), f"{module_name}.__all__ lists missing {name}"


def test_top_level_exports_exactly_the_public_names() -> None:
    assert set(cqrs.__all__) == PUBLIC["cqrs"]
    for name in cqrs.__all__:
        assert getattr(cqrs, name) is not None


def test_seed_imports_resolve() -> None:
    for module_name, names in SEED_IMPORTS.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name} is missing"


def test_public_objects_have_docstrings() -> None:
    for name in cqrs.__all__:
        assert getattr(cqrs, name).__doc__, f"cqrs.{name} has no docstring"
