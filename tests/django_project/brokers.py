"""A message broker the Django outbox tests read back: it keeps what it was sent, in this process."""

from __future__ import annotations

from cqrs.message_brokers.protocol import Message, MessageBroker


class KeepingBroker(MessageBroker):
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send_message(self, message: Message) -> None:
        self.sent.append(message)

    def event_names(self) -> list[str]:
        return [(message.headers or {}).get("event-name", "") for message in self.sent]


broker = KeepingBroker()
