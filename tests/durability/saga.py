"""The saga the durability tests crash, race and recover, and the ledgers its steps write.

Every run of a step's ``act`` or ``compensate`` writes one ledger record
*before* it returns, so the ledger counts how often each step really ran, no
matter what the saga storage says. The steps tolerate reruns: their context
change is idempotent and each passes the idempotency key ``<saga id>:<step>``
to the "service" it calls (the ledger's effects table, where a rerun is a
no-op).

The steps are built by `StepEnv`, which is also the container the engine
resolves them from, so a test or the runner decides which ledger and which
hooks (kill points, gates) the steps use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import typing
import uuid

from cqrs.correlation import get_saga_id
from cqrs.response import Response
from cqrs.saga.models import SagaContext
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.step import SagaStepHandler, SagaStepResult

__all__ = [
    "KILL_MARKER",
    "STEP_NAMES",
    "Barrier",
    "FileLedger",
    "Gates",
    "Hooks",
    "KillAt",
    "LedgerLine",
    "OrderContext",
    "OrderSaga",
    "PgLedger",
    "StepEnv",
    "StepFailedError",
    "announce_kill_point",
    "read_file_ledger",
    "read_pg_ledger",
]

T = typing.TypeVar("T")

STEP_NAMES = ("reserve", "charge", "ship")


# -- ledgers ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LedgerLine:
    """One recorded run: ``action`` is ``act`` or ``compensate``; ``tag`` names the writer."""

    action: str
    saga_id: str
    step: str
    tag: str = ""


class Ledger(typing.Protocol):
    async def record(self, action: str, saga_id: uuid.UUID, step: str) -> None: ...


class FileLedger:
    """Appends ``<action> <saga id> <step> <tag>`` lines; each one is on disk before `record` returns."""

    def __init__(self, path: str | os.PathLike[str], tag: str = "") -> None:
        self.path = os.fspath(path)
        self.tag = tag or f"pid{os.getpid()}"

    async def record(self, action: str, saga_id: uuid.UUID, step: str) -> None:
        line = f"{action} {saga_id} {step} {self.tag}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            assert written == len(line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_file_ledger(path: str | os.PathLike[str]) -> list[LedgerLine]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [LedgerLine(*line.split()) for line in handle if line.strip()]


PG_LEDGER_DDL = (
    """CREATE TABLE IF NOT EXISTS ledger (
        seq bigserial PRIMARY KEY,
        action text NOT NULL,
        saga_id text NOT NULL,
        step text NOT NULL,
        tag text NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS effects (idempotency_key text PRIMARY KEY, tag text NOT NULL)",
)


class PgLedger:
    """Records runs in the ``ledger`` table; the "effect" is an idempotent insert keyed by saga id + step.

    Both inserts commit together in the step's own transaction (on its own
    connection, not the saga storage's), before the step returns.
    """

    def __init__(self, pool: typing.Any, tag: str) -> None:
        self.pool = pool  # an asyncpg pool
        self.tag = tag

    @staticmethod
    async def create_tables(conn: typing.Any) -> None:
        for statement in PG_LEDGER_DDL:
            await conn.execute(statement)

    async def record(self, action: str, saga_id: uuid.UUID, step: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO ledger (action, saga_id, step, tag) VALUES ($1, $2, $3, $4)",
                action, str(saga_id), step, self.tag,
            )
            if action == "act":
                await conn.execute(
                    "INSERT INTO effects (idempotency_key, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    f"{saga_id}:{step}", self.tag,
                )


async def read_pg_ledger(conn: typing.Any) -> list[LedgerLine]:
    rows = await conn.fetch("SELECT action, saga_id, step, tag FROM ledger ORDER BY seq")
    return [LedgerLine(r["action"], r["saga_id"], r["step"], r["tag"]) for r in rows]


# -- hooks: where a test stops or kills the step code -----------------------------------------


class Hooks:
    """Called by the steps at ``before_act``, ``after_act`` and ``after_compensate``; does nothing."""

    async def at(self, point: str, saga_id: uuid.UUID, step: str) -> None:
        return None


class Barrier:
    """Counts arrivals; the ``expected``-th one calls ``then``; every arrival then waits forever."""

    def __init__(self, expected: int, then: typing.Callable[[], None]) -> None:
        self.expected = expected
        self.then = then
        self.arrived = 0
        self._never = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.then()
        await self._never.wait()


#: The line a crashing runner prints when every armed saga is at the kill point; the test then SIGKILLs it.
KILL_MARKER = "at-kill-point"


def announce_kill_point() -> None:
    """Tell the parent (on stdout) that the process may be killed now; the caller then waits forever."""
    sys.stdout.write(KILL_MARKER + "\n")
    sys.stdout.flush()


class KillAt(Hooks):
    """Announces the kill point once every armed saga has reached ``point`` of ``step``.

    Armed sagas that get there first wait (and so does the last one, once it
    has announced), so when the parent's SIGKILL arrives every one of them is
    at exactly that point (and sagas that are not armed are untouched).
    """

    def __init__(
        self,
        point: str,
        step: str,
        armed: typing.Collection[uuid.UUID],
        then: typing.Callable[[], None] = announce_kill_point,
    ) -> None:
        self.point = point
        self.step = step
        self.armed = set(armed)
        self.barrier = Barrier(len(self.armed), then)

    def matches(self, point: str, saga_id: uuid.UUID | None, step: str) -> bool:
        return point == self.point and step == self.step and saga_id in self.armed

    async def at(self, point: str, saga_id: uuid.UUID, step: str) -> None:
        if self.matches(point, saga_id, step):
            await self.barrier.arrive()


@dataclasses.dataclass
class Gate:
    entered: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    passes: int = 0


class Gates(Hooks):
    """In-process pauses: a step reaching a gated ``(point, step)`` sets ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        self.gates: dict[tuple[str, str], Gate] = {}

    def gate(self, point: str, step: str) -> Gate:
        return self.gates.setdefault((point, step), Gate())

    async def at(self, point: str, saga_id: uuid.UUID, step: str) -> None:
        gate = self.gates.get((point, step))
        if gate is not None:
            gate.passes += 1
            gate.entered.set()
            await gate.release.wait()


# -- the saga ------------------------------------------------------------------------------


class StepFailedError(Exception):
    """The business failure a step raises when the context asks it to."""


@dataclasses.dataclass
class OrderContext(SagaContext):
    order: int
    #: The step whose ``act`` raises `StepFailedError` (after writing its ledger line).
    fail_at: str | None = None
    #: Steps whose effect is applied; appending is idempotent, so a rerun changes nothing.
    applied: list[str] = dataclasses.field(default_factory=list)


class StepReceipt(Response):
    idempotency_key: str


class StepEnv:
    """What the steps use (ledger, hooks); also the container the engine builds them with."""

    def __init__(self, ledger: Ledger, hooks: Hooks | None = None) -> None:
        self.ledger = ledger
        self.hooks = hooks or Hooks()

    async def resolve(self, type_: type[T]) -> T:
        return type_(self)  # type: ignore[call-arg]


class _LedgerStep(SagaStepHandler[OrderContext, StepReceipt]):
    def __init__(self, env: StepEnv) -> None:
        self.env = env

    @staticmethod
    def _saga_id() -> uuid.UUID:
        saga_id = get_saga_id()
        assert saga_id is not None, "the engine sets the saga id for step code"
        return saga_id

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, StepReceipt]:
        saga_id = self._saga_id()
        await self.env.hooks.at("before_act", saga_id, self.name)
        await self.env.ledger.record("act", saga_id, self.name)
        await self.env.hooks.at("after_act", saga_id, self.name)
        if context.fail_at == self.name:
            raise StepFailedError(f"{self.name} refused order {context.order}")
        if self.name not in context.applied:
            context.applied.append(self.name)
        return self._generate_step_result(StepReceipt(idempotency_key=f"{saga_id}:{self.name}"))

    async def compensate(self, context: OrderContext) -> None:
        saga_id = self._saga_id()
        await self.env.ledger.record("compensate", saga_id, self.name)
        await self.env.hooks.at("after_compensate", saga_id, self.name)


class ReserveStep(_LedgerStep):
    name = "reserve"


class ChargeStep(_LedgerStep):
    name = "charge"


class ShipStep(_LedgerStep):
    name = "ship"


class OrderSaga(Saga[OrderContext]):
    name = "durability_order"
    steps = [ReserveStep, ChargeStep, ShipStep]
    # Compensations here never fail; no backoff waits if one ever did.
    compensation_retry = RetryPolicy(attempts=1, delay=0.0)
