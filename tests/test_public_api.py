"""The public surface: exactly these names, where the seed imports them.

Adding or removing a public name is a decision; this test makes it a visible one.
"""

from __future__ import annotations

import importlib

import cqrs

PUBLIC = {
    "cqrs": {
        "Container", "EventHandler", "EventMap", "Response", "RetryPolicy", "Saga", "SagaContext",
        "SagaError", "SagaMap", "SagaMediator", "SagaNotBoundError", "SagaOutcome", "SagaStatus",
        "SagaStepHandler", "SagaStepResult",
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
    "cqrs.saga.saga": {"Saga"},
    "cqrs.saga.step": {"SagaStepHandler", "SagaStepResult"},
    "cqrs.saga.mediator": {"SagaMediator", "SagaOutcome"},
    "cqrs.saga.map": {"SagaMap"},
    "cqrs.saga.models": {"SagaContext"},
    "cqrs.saga.fallback": {"Fallback"},
    "cqrs.saga.retry": {"RetryPolicy"},
    "cqrs.saga.exceptions": {
        "ContextDeserializationError", "ContextSerializationError", "SagaAlreadyRunningError",
        "SagaCompensatedError", "SagaConcurrencyError", "SagaDeadlineExceededError", "SagaDefinitionError", "SagaError",
        "SagaIdConflictError", "SagaNotBoundError", "SagaNotFoundError", "SagaNotRunnableError",
        "SagaOwnershipLostError", "SagaStepTimeoutError", "StepContractError", "UnknownSagaError",
    },
    "cqrs.saga.mermaid": {"SagaMermaid"},
    "cqrs.saga.recovery": {"RecoveryWorker", "recover_saga"},
    "cqrs.saga.storage.enums": {"SagaStatus", "SagaStepStatus"},
    "cqrs.saga.storage.memory": {"MemorySagaStorage"},
    "cqrs.saga.storage.models": {"Lease", "NewSaga", "SagaClaim", "SagaLogEntry", "SagaRecord", "StepEntry"},
    "cqrs.saga.storage.protocol": {"ISagaStorage", "SagaEngineStorage", "SagaOperatorStorage", "SagaStorage"},
    "cqrs.saga.storage.compat": {"PythonCqrsStorageMethods"},
    "cqrs.saga.storage.sqlalchemy": {"Base", "SqlAlchemySagaStorage", "saga_executions", "saga_log"},
    "cqrs.response": {"Response"},
    "cqrs.container": {"Container", "as_container"},
    "cqrs.events": {"EventHandler", "EventMap"},
    "cqrs.correlation": {"CorrelationIdFilter", "get_correlation_id", "new_correlation_id", "set_correlation_id"},
    "cqrs.config": {"SagaConfig", "configure", "get_config"},
    "cqrs.triggers": {
        "AcceptedEvent", "SignatureVerifier", "TRIGGER_NAMESPACE", "TriggerDispatcher", "TriggerSpec",
        "TriggeredSaga", "derive_saga_id", "trigger", "triggers_of",
    },
    "cqrs.adapters.circuit_breaker": {"AioBreakerAdapter", "CircuitBreaker", "CircuitOpenError"},
    "cqrs.adapters.di": {"DIContainer"},
    "cqrs.integrations.fastapi": {
        "SagaContextMiddleware", "SagaRuntime", "create_lifespan", "get_config", "get_mediator", "get_runner",
        "get_storage", "read_saga_context", "run_saga_background", "saga_context", "saga_event_stream",
        "saga_lifespan", "saga_router", "webhook_router",
    },
    "cqrs.integrations.flask": {
        "BadRequest", "SagaExtension", "SagaHandle", "SagaResult", "SagaRunTimeout", "read_saga_context",
        "register_webhook_blueprint",
    },
    "cqrs.integrations.django": {
        "BadRequest", "CorrelationIdMiddleware", "arun_saga", "asaga_diagram", "asaga_status", "astart_saga",
        "atomic_saga_start", "error_response", "get_saga_config", "read_json", "read_saga_context", "run_saga",
        "saga_diagram", "saga_status", "setup", "shutdown", "start_saga", "wait_for_sagas",
    },
    "cqrs.integrations.django.transaction": {
        "atomic_saga_start", "create_saga_tables", "drop_saga_tables", "prepare_sqlite_connection",
    },
    "cqrs.integrations.django.middleware": {"CorrelationIdMiddleware"},
    "cqrs.integrations.django.webhooks": {"SETTING", "urlpatterns", "webhook_urlpatterns"},
}


def test_every_public_module_exports_exactly_its_pinned_names() -> None:
    for module_name, names in MODULE_ALL.items():
        module = importlib.import_module(module_name)
        assert set(module.__all__) == names, module_name
        for name in names:
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
