"""`idempotent`: a subscription handler that runs a consumer's handler once per message id."""

from __future__ import annotations

import typing

from cqrs.inbox.protocol import Inbox
from cqrs.message_brokers.consumer import Handler, Received, Rejected

__all__ = ["InboxHandler", "idempotent"]

Tx = typing.TypeVar("Tx")

#: A consumer's handler: the message and the transaction its writes go in (with the inbox record).
InboxHandler = typing.Callable[[Received, Tx], typing.Awaitable[None]]


def idempotent(inbox: Inbox[Tx], consumer: str, handler: InboxHandler[Tx]) -> Handler:
    """A `cqrs.message_brokers.consumer.Handler` that runs ``handler`` once per message id for ``consumer``.

    Each message opens an inbox transaction, records its id and, if it was
    not handled before, runs ``handler(received, tx)``; the transaction
    commits when the handler returns (then the subscription acknowledges
    the message) and rolls back when it raises (nothing recorded: the
    redelivery runs it again). A message handled before is acknowledged
    without running the handler. A message without an id cannot be told
    from others: it is refused for good (`Rejected`: dead-lettered where the
    subscription has a dead letter) rather than failed, which would have it
    redelivered forever.
    """
    if not consumer:
        raise ValueError("idempotent() needs a consumer name (the ids are recorded per consumer)")

    async def handle(received: Received) -> None:
        if not received.message_id:
            raise Rejected(f"A message on {received.topic!r} has no message id: {consumer} handles each id once")
        async with inbox.transaction() as tx:
            if await inbox.record(tx, consumer, received.message_id):
                await handler(received, tx)

    return handle
