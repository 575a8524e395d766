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


def test_top_level_exports_exactly_the_public_names() -> None:
    assert set(cqrs.__all__) == PUBLIC["cqrs"]
    for name in cqrs.__all__:
        assert getattr(cqrs, name) is not None


def test_seed_imports_resolve() -> None:
    for module_name, names in SEED_IMPORTS.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name} is missing"


def test_public_modules_declare_all() -> None:
    for module_name in SEED_IMPORTS:
        module = importlib.import_module(module_name)
        if module_name != "cqrs.saga.bootstrap":
            assert hasattr(module, "__all__"), f"{module_name} has no __all__"
            for name in module.__all__:
                assert hasattr(module, name), f"{module_name}.__all__ lists missing {name}"


def test_public_objects_have_docstrings() -> None:
    for name in cqrs.__all__:
        assert getattr(cqrs, name).__doc__, f"cqrs.{name} has no docstring"
