"""The inbox: a consumer handles each message id once, the record of it committed with the handler's own writes.

Brokers deliver at least once (a relay republishes what it was not sure of,
a consumer that died before acknowledging gets the message again), and every
message carries a stable id (``message-id``). An inbox records, per consumer,
the ids handled; the record is written in the handler's own transaction, so
it exists if and only if the handler's writes committed::

    inbox = SqlAlchemyInbox(engine)          # cqrs.inbox.sqlalchemy; await inbox.create_tables() once

    async def bill(received: Received, conn: AsyncConnection) -> None:
        await conn.execute(invoices.insert().values(order=received.json()["order_id"]))

    handler = idempotent(inbox, "billing", bill)   # a Handler for any subscription
    await RabbitMQSubscription(url, queue="billing").run(handler)

A redelivery finds the id recorded and does nothing (the message is
acknowledged); a handler that raised recorded nothing, so the redelivery
runs it again. Two copies of one message handled at once by two consumers:
the second waits on the first's uncommitted record and then finds it.

`MemoryInbox` is the in-memory twin (for tests, and handlers whose effects
are not in a database). The SQL inbox is its own table (``cqrs_inbox``) with
its own `SqlAlchemyInbox.create_tables`: a consumer service need not run
sagas, and its inbox is not part of the versioned saga schema.
"""

from cqrs.inbox.handler import InboxHandler, idempotent
from cqrs.inbox.memory import MemoryInbox, MemoryInboxTransaction
from cqrs.inbox.protocol import Inbox

__all__ = ["Inbox", "InboxHandler", "MemoryInbox", "MemoryInboxTransaction", "idempotent"]
