"""Schemathesis over the FastAPI example's OpenAPI: every operation, fuzzed, answers no 5xx.

The example runs as users run it (uvicorn in a subprocess, SQLite in
tmp_path); schemathesis reads ``/openapi.json`` and sends what the schema
allows and what it does not. The server's log must hold no traceback.
"""

from __future__ import annotations

import pathlib
import typing

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from example_server import ExampleServer

pytestmark = pytest.mark.slow

#: Examples per operation and mode (positive and negative data).
EXAMPLES = 40
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fastapi_app" / "main.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> typing.Iterator[ExampleServer]:
    tmp_path = tmp_path_factory.mktemp("schemathesis")
    server = ExampleServer(EXAMPLE, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'orders.sqlite3'}")
    try:
        server.wait_until_healthy()
        yield server
        assert "Traceback" not in server.output, server.output
    finally:
        server.kill()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_no_operation_answers_a_server_error(server: ExampleServer, mode: schemathesis.GenerationMode) -> None:
    api = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/orders", "/orders/wait", "/orders/stream", "/sagas", "/health"}
    fuzzed = []
    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck)
        )
        @hypothesis.given(case=operation.as_strategy(mode))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.base_url, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:
            # Negative data needs something to break: an operation without parameters has none.
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.append(operation.path)
    assert {"/orders", "/orders/wait", "/orders/stream", "/sagas"} <= set(fuzzed)
