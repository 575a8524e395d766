"""A broker that sends nothing: python-cqrs's default when no broker is configured."""

from __future__ import annotations

import logging

from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["DevnullMessageBroker"]

logger = logging.getLogger("cqrs.events")


class DevnullMessageBroker(MessageBroker):
    """Drops every message (with a warning naming it); keeps the last ones in `sent` for tests."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send_message(self, message: Message) -> None:
        logger.warning("No message broker is configured: message %s (%s) was dropped", message.message_name,
                       message.message_id)
        self.sent.append(message)
        del self.sent[:-100]
