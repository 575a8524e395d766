"""`AioBreakerAdapter(..., storage_factory=...)`: breaker state kept where the factory says (issue 12, point 7).

python-cqrs's signature, ``AioBreakerAdapter(fail_max=5, timeout_duration=60,
exclude=None, storage_factory=None)``: the factory is called with the
breaker's name (here the step name) the first time that step's breaker is
needed and returns an aiobreaker ``CircuitBreakerStorage``. With aiobreaker's
Redis storage, processes that share the Redis keys share one breaker: the
failures of one process count toward opening it, and once open, no process
calls the primary step.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
import typing
import uuid

import di
import pytest
import redis
from aiobreaker import CircuitBreakerState
from aiobreaker.storage.base import CircuitBreakerStorage
from aiobreaker.storage.memory import CircuitMemoryStorage
from aiobreaker.storage.redis import CircuitRedisStorage

from conftest import require_service
from cqrs.adapters.circuit_breaker import AioBreakerAdapter, CircuitBreaker
from cqrs.saga import bootstrap
from cqrs.saga.fallback import Fallback
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult
from cqrs.saga.storage.enums import SagaStatus

CALLS: dict[str, int] = {}


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    source: str | None = None


class PrimaryStep(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        CALLS["primary"] = CALLS.get("primary", 0) + 1
        raise ConnectionError("service unavailable")


class FallbackStep(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, None]:
        CALLS["fallback"] = CALLS.get("fallback", 0) + 1
        context.source = "fallback"
        return self._generate_step_result(None)


def saga_with(breaker: CircuitBreaker) -> type[Saga[OrderContext]]:
    class GuardedSaga(Saga[OrderContext]):
        steps = [Fallback(step=PrimaryStep, fallback=FallbackStep, circuit_breaker=breaker)]

    return GuardedSaga


async def run_once(saga_type: type[Saga[OrderContext]]) -> None:
    mediator = bootstrap.bootstrap(di.Container(), sagas_mapper=lambda m: m.bind(OrderContext, saga_type))
    outcome = await mediator.run(OrderContext(order_id=str(uuid.uuid4())))
    assert outcome.status == SagaStatus.COMPLETED


@pytest.fixture(autouse=True)
def reset_calls() -> typing.Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def test_the_adapter_takes_python_cqrs_parameters() -> None:
    made: list[str] = []

    def factory(name: str) -> CircuitBreakerStorage:
        made.append(name)
        return CircuitMemoryStorage(CircuitBreakerState.CLOSED)

    positional = AioBreakerAdapter(2, 60, None, factory)
    by_keyword = AioBreakerAdapter(fail_max=2, timeout_duration=60, exclude=None, storage_factory=factory)
    assert isinstance(positional, CircuitBreaker) and isinstance(by_keyword, CircuitBreaker)
    assert made == []  # the factory is not called until a breaker is needed
    AioBreakerAdapter(exclude=[ValueError])  # every parameter has python-cqrs's default


async def test_the_factory_makes_each_steps_storage_once_and_the_state_lives_there() -> None:
    made: dict[str, CircuitBreakerStorage] = {}

    def factory(name: str) -> CircuitBreakerStorage:
        assert name not in made
        made[name] = CircuitMemoryStorage(CircuitBreakerState.CLOSED)
        return made[name]

    saga_type = saga_with(AioBreakerAdapter(fail_max=2, timeout_duration=60, storage_factory=factory))
    for _ in range(3):
        await run_once(saga_type)
    assert list(made) == ["PrimaryStep"]  # named after the step it guards
    assert made["PrimaryStep"].state == CircuitBreakerState.OPEN
    assert CALLS == {"primary": 2, "fallback": 3}  # the third saga fell back without calling the primary


async def test_the_adapter_reads_the_open_state_from_the_storage() -> None:
    """An open state put in the storage by someone else (another process) is honoured at once."""
    storage = CircuitMemoryStorage(CircuitBreakerState.CLOSED)
    adapter = AioBreakerAdapter(fail_max=5, timeout_duration=60, storage_factory=lambda name: storage)
    assert not adapter.is_open("PrimaryStep")
    storage.opened_at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    storage.state = CircuitBreakerState.OPEN
    assert adapter.is_open("PrimaryStep")
    await run_once(saga_with(adapter))
    assert CALLS == {"fallback": 1}
    # Once the timeout has passed, the next call is a trial call: the breaker no longer counts as open.
    storage.opened_at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        seconds=61
    )
    assert not adapter.is_open("PrimaryStep")


# -- one breaker in Redis, shared by processes -------------------------------------------------------

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

#: One saga run in a process of its own, through a breaker kept in Redis under the namespace argv[1].
PROCESS = """
import asyncio, dataclasses, json, sys, uuid
import di, redis
from aiobreaker import CircuitBreakerState
from aiobreaker.storage.redis import CircuitRedisStorage
from cqrs.adapters.circuit_breaker import AioBreakerAdapter
from cqrs.saga import bootstrap
from cqrs.saga.fallback import Fallback
from cqrs.saga.models import SagaContext
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler

calls = {"primary": 0, "fallback": 0}

@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str

class PrimaryStep(SagaStepHandler[OrderContext, None]):
    async def act(self, context):
        calls["primary"] += 1
        raise ConnectionError("service unavailable")

class FallbackStep(SagaStepHandler[OrderContext, None]):
    async def act(self, context):
        calls["fallback"] += 1
        return self._generate_step_result(None)

def storage_factory(name):
    client = redis.Redis(host=sys.argv[2], port=int(sys.argv[3]))
    return CircuitRedisStorage(CircuitBreakerState.CLOSED, client, namespace=f"{sys.argv[1]}:{name}")

breaker = AioBreakerAdapter(fail_max=2, timeout_duration=60, storage_factory=storage_factory)

class GuardedSaga(Saga[OrderContext]):
    steps = [Fallback(step=PrimaryStep, fallback=FallbackStep, circuit_breaker=breaker)]

async def main():
    mediator = bootstrap.bootstrap(di.Container(), sagas_mapper=lambda m: m.bind(OrderContext, GuardedSaga))
    outcome = await mediator.run(OrderContext(order_id=str(uuid.uuid4())))
    print(json.dumps({**calls, "status": str(outcome.status), "open": breaker.is_open("PrimaryStep")}))

asyncio.run(main())
"""


def run_process(namespace: str) -> dict[str, typing.Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, namespace, REDIS_HOST, str(REDIS_PORT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, typing.Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def redis_namespace() -> typing.Iterator[str]:
    """A Redis key namespace of this test's own (its keys deleted afterwards)."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    namespace = f"cqrs-test-{uuid.uuid4().hex}"
    yield namespace
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.slow
async def test_a_redis_breaker_is_one_breaker_across_processes(redis_namespace: str) -> None:
    def storage_factory(name: str) -> CircuitBreakerStorage:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        return CircuitRedisStorage(CircuitBreakerState.CLOSED, client, namespace=f"{redis_namespace}:{name}")

    here = AioBreakerAdapter(fail_max=2, timeout_duration=60, storage_factory=storage_factory)
    here_saga = saga_with(here)

    # This process: the primary fails once (one failure of two), the fallback runs.
    await run_once(here_saga)
    assert CALLS == {"primary": 1, "fallback": 1}
    assert not here.is_open("PrimaryStep")

    # Another process: its failure is the second on the same breaker, which opens.
    assert run_process(redis_namespace) == {"primary": 1, "fallback": 1, "status": "completed", "open": True}

    # This process sees it open (its own in-memory count is still one) and no longer calls the primary.
    assert here.is_open("PrimaryStep")
    await run_once(here_saga)
    assert CALLS == {"primary": 1, "fallback": 2}

    # Nor does a third process.
    assert run_process(redis_namespace) == {"primary": 0, "fallback": 1, "status": "completed", "open": True}
