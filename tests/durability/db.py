"""SQL helpers for the durability tests: open the real storage, expire leases, kill connections, seed sagas."""

from __future__ import annotations

import datetime
import typing
import uuid

import group_commit_switch
from cqrs.saga.storage.enums import SagaStatus, SagaStepStatus
from cqrs.saga.storage.models import Lease, NewSaga, StepEntry

from .saga import STEP_NAMES, OrderContext, OrderSaga

# The runner processes too: CQRS_TEST_GROUP_COMMIT=1 turns group commit on for PostgreSQL.
group_commit_switch.install()

__all__ = [
    "expire_leases",
    "open_storage",
    "pg_dsn",
    "seed_compensating",
    "seed_interrupted",
    "terminate_backends",
]

DEAD_OWNER = "dead-runner:0:00000000"


def pg_dsn(url: str) -> str:
    """The asyncpg DSN of a ``postgresql+asyncpg://`` URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def open_storage(url: str, *, create: bool = True, **kwargs: typing.Any) -> typing.Any:
    from cqrs.saga.storage.sqlalchemy import SqlAlchemySagaStorage

    storage = SqlAlchemySagaStorage.from_url(url, **kwargs)
    if create:
        await storage.create_tables()
    return storage


async def expire_leases(url: str) -> int:
    """Move every held lease an hour into the past, as if its runner had died long ago; returns how many."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from cqrs.saga.storage import sqlalchemy as sql_storage

    table = sql_storage.saga_executions
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                sa.update(table).where(table.c.lease_expires_at.is_not(None)).values(lease_expires_at=past)
            )
            return int(result.rowcount)
    finally:
        await engine.dispose()


async def terminate_backends(url: str, application_name: str) -> int:
    """``pg_terminate_backend`` the connections of this database opened as ``application_name``."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
        return sum(1 for row in rows if row["killed"])
    finally:
        await conn.close()


async def seed_interrupted(
    storage: typing.Any, count: int, steps_done: typing.Callable[[int], int] = lambda order: order % 3
) -> dict[uuid.UUID, int]:
    """Store ``count`` sagas as a runner that died would leave them; returns saga id -> steps completed.

    Saga ``i`` has its first ``steps_done(i)`` steps recorded (default 0, 1 or 2 in turn), written
    through the storage API exactly as the engine writes them (start, then one
    checkpoint per step), under a lease of a runner that no longer exists. The
    caller expires the leases.
    """
    seeded: dict[uuid.UUID, int] = {}
    for order in range(count):
        saga_id = uuid.uuid4()
        done = steps_done(order)
        context = OrderContext(order=order)
        lease = await storage.start_saga(
            NewSaga(saga_id=saga_id, name=OrderSaga.name, context=context.to_dict(),
                    definition_version=OrderSaga.version),
            DEAD_OWNER,
            60.0,
        )
        assert lease is not None
        for step in STEP_NAMES[:done]:
            context.applied.append(step)
            ok = await storage.checkpoint(
                saga_id,
                lease,
                entry=StepEntry(step, "act", SagaStepStatus.COMPLETED, None,
                                {"idempotency_key": f"{saga_id}:{step}"}),
                context=context.to_dict(),
                lease_seconds=60.0,
            )
            assert ok
        seeded[saga_id] = done
    return seeded


SHIP_ERROR = "StepFailedError: ship refused the order"


async def seed_compensating(storage: typing.Any, count: int) -> list[uuid.UUID]:
    """Store ``count`` sagas as a runner that died just after ``ship`` failed leaves them: compensating.

    ``reserve`` and ``charge`` are recorded, then ``ship``'s failure with the
    switch to ``compensating`` (the engine's own checkpoint); no compensation
    is recorded. The caller expires the leases.
    """
    seeded = await seed_interrupted(storage, count, steps_done=lambda _: 2)
    for saga_id in seeded:
        record = await storage.get_saga(saga_id)
        assert record is not None and record.owner == DEAD_OWNER
        ok = await storage.checkpoint(
            saga_id,
            Lease(owner=DEAD_OWNER, epoch=record.lease_epoch),
            entry=StepEntry("ship", "act", SagaStepStatus.FAILED, SHIP_ERROR),
            status=SagaStatus.COMPENSATING,
            error=SHIP_ERROR,
            lease_seconds=60.0,
        )
        assert ok
    return list(seeded)
