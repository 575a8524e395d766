"""Broker triggers: ``@trigger`` sources fed by a broker subscription (the broker side of `cqrs.triggers`).

    triggers = BrokerTriggers(mediator, source="order_created")
    await consume(RabbitMQSubscription(url, queue="orders"), triggers, stop=stop)
    # or RedisStreamSubscription(...), NatsSubscription(...)

`BrokerTriggers` is a subscription handler. Each message's body (a JSON
object) is the event; it goes through the same `cqrs.triggers.TriggerRouter`
as a webhook delivery, so the same idempotency (a trigger's idempotency key;
for a trigger without one, the message id, so a redelivery starts nothing
new), the same correlation (the message's ``correlation-id`` header, else a
new one) and the same status (`BrokerTriggers.status`, as the webhook status
route shows it). The handler returns once every saga the event starts is
recorded: the subscription acknowledges the message only then. A message
no trigger can read (not JSON, no idempotency field, a key out of attempts)
is refused for good (`cqrs.message_brokers.consumer.Rejected`); any other
failure (the database down) leaves it to be redelivered.

The recorded sagas run in the background in this process (``run=False``
leaves them to a recovery worker); if the process dies first, recovery
finishes them, as for webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import typing

from cqrs.integrations._background import resume_quietly
from cqrs.message_brokers.consumer import Received, Rejected
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.saga import Saga
from cqrs.triggers import AcceptedEvent, TriggerError, TriggerRouter

__all__ = ["BrokerTriggers"]

logger = logging.getLogger("cqrs.integrations")

SourceOf = typing.Callable[[Received], str]


class BrokerTriggers:
    """Starts the sagas of ``source``'s triggers from broker messages (see the module doc).

    ``source`` is a trigger source name, or a function choosing it per
    message (by topic, by name). ``sagas`` default to every saga of the
    mediator's map. ``accepted``, ``duplicates``, ``ignored`` and
    ``rejected`` count the messages by outcome.
    """

    def __init__(
        self,
        mediator: SagaMediator,
        *,
        source: str | SourceOf,
        sagas: typing.Iterable[type[Saga[typing.Any]]] | None = None,
        run: bool = True,
    ) -> None:
        self.mediator = mediator
        self.router = TriggerRouter(sagas if sagas is not None else mediator.saga_map.sagas())
        if isinstance(source, str):
            self.router.bindings(source)  # an unknown source is refused now, not at the first message
        self.source = source
        self.run = run
        self.accepted = self.duplicates = self.ignored = self.rejected = 0
        self._runs: set[asyncio.Task[typing.Any]] = set()

    def source_of(self, received: Received) -> str:
        """The trigger source ``received`` is an event of."""
        return self.source if isinstance(self.source, str) else self.source(received)

    async def __call__(self, received: Received) -> None:
        """Record the sagas the message's event starts (then the subscription acknowledges it)."""
        try:
            event = received.json()
        except Rejected:
            self.rejected += 1
            raise
        if not isinstance(event, dict):
            self.rejected += 1
            raise Rejected(f"Message {received.message_id} is not a JSON object")
        try:
            answer = await self.router.accept(
                self.mediator, self.source_of(received), event,
                correlation_id=received.correlation_id, delivery_id=received.message_id,
            )
        except TriggerError as error:
            self.rejected += 1
            raise Rejected(str(error)) from None
        self._count(answer)
        if self.run:
            for saga in answer.started:
                task = asyncio.ensure_future(resume_quietly(self.mediator, saga.saga_id))
                self._runs.add(task)
                task.add_done_callback(self._runs.discard)

    def _count(self, answer: AcceptedEvent) -> None:
        if answer.status == "accepted":
            self.accepted += 1
        elif answer.status == "duplicate":
            self.duplicates += 1
        else:
            self.ignored += 1

    async def status(self, correlation_id: str, source: str | None = None) -> dict[str, typing.Any] | None:
        """The stored state of the sagas a message with ``correlation_id`` started (`TriggerRouter.status`);
        None if none was. ``source`` defaults to the one given (required when it is chosen per message)."""
        if source is None:
            if not isinstance(self.source, str):
                raise ValueError("name the source: this BrokerTriggers chooses it per message")
            source = self.source
        return await self.router.status(self.mediator.storage, source, correlation_id)

    async def wait_runs(self) -> None:
        """Wait for the saga runs under way in this process to end."""
        while self._runs:
            await asyncio.wait(set(self._runs))
