"""Outbox rows: messages written with a step's checkpoint, published later by a relay."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import typing
import uuid

__all__ = ["OutboxMessage", "OutboxRecord", "OutboxStatus"]

JsonDict = dict[str, typing.Any]


class OutboxStatus(str, enum.Enum):
    """Where an outbox row stands: waiting to be published, published, or parked for an operator."""

    PENDING = "pending"
    PUBLISHED = "published"
    PARKED = "parked"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(slots=True)
class OutboxMessage:
    """A message to write with a checkpoint (the storage adds the saga id and the order).

    ``message_id`` is stable (a notification event's ``event_id``), so a
    consumer drops a duplicate delivery by it. ``headers`` carry it again with
    the saga id, the correlation id and the trace context.
    """

    message_id: uuid.UUID
    topic: str
    name: str
    payload: JsonDict
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class OutboxRecord:
    """A stored outbox row, as a relay or an operator reads it (a copy: changing it changes nothing stored).

    Slotted, not frozen: a relay builds one per message, and a frozen dataclass's ``__init__`` costs
    about four times as much.

    ``seq`` orders the rows (a saga's messages are published in ``seq``
    order); ``attempts`` counts failed publications; ``next_attempt_at`` is
    when a failed row may be tried again; ``error`` is the last failure's.
    ``owner`` and ``lease_expires_at`` are the claim of the relay that holds
    the row (or held it last, until the row is marked).
    """

    seq: int
    message_id: uuid.UUID
    saga_id: uuid.UUID
    topic: str
    name: str
    payload: JsonDict
    headers: dict[str, str]
    status: OutboxStatus
    attempts: int = 0
    error: str | None = None
    created_at: datetime.datetime | None = None
    published_at: datetime.datetime | None = None
    next_attempt_at: datetime.datetime | None = None
    owner: str | None = None
    lease_expires_at: datetime.datetime | None = None
