"""The outbox storage protocol: what a relay needs from the database the sagas live in.

Rows are written by the engine's own commits (`SagaEngineStorage.start_saga`
with `NewSaga.outbox`, `SagaEngineStorage.checkpoint` with ``outbox=``), so a
step's messages exist if and only if its checkpoint committed. Relays claim
rows with a lease (any number of relays on any hosts share the work), publish
them, and mark each published, failed (retried later) or parked.
"""

from __future__ import annotations

import datetime
import typing
import uuid

from cqrs.outbox.models import OutboxRecord, OutboxStatus

__all__ = ["OutboxStorage"]


@typing.runtime_checkable
class OutboxStorage(typing.Protocol):
    """Claims, marks and lists outbox rows."""

    async def claim_outbox(self, owner: str, lease_seconds: float, *, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` pending rows that are due, each the earliest unpublished row of its saga.

        A claimed row is leased to ``owner`` for ``lease_seconds``; no other
        relay claims it (nor a later row of the same saga) until the lease
        expires or the row is marked. Rows come in ``seq`` order.
        """

    async def mark_published(self, owner: str, seqs: typing.Collection[int]) -> int:
        """Mark rows this owner holds as published; returns how many were."""

    async def mark_failed(
        self, owner: str, seq: int, error: str, *, retry_in: float | None
    ) -> bool:
        """Record a failed publication: retry after ``retry_in`` seconds, or park the row when None."""

    async def outbox_backlog(self) -> int:
        """How many rows wait to be published (pending, parked ones not counted)."""

    async def list_outbox(
        self,
        *,
        status: OutboxStatus | None = None,
        saga_id: uuid.UUID | None = None,
        limit: int = 100,
    ) -> list[OutboxRecord]:
        """Rows in ``seq`` order, filtered."""

    async def requeue_outbox(self, message_id: uuid.UUID) -> bool:
        """Put a parked (or failed) row back to be published now, its attempts reset; False if unknown."""

    async def purge_outbox(self, *, older_than: datetime.timedelta, limit: int = 1000) -> int:
        """Delete up to ``limit`` published rows published more than ``older_than`` ago."""
