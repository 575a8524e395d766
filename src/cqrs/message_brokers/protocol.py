"""The message a broker sends, and the broker interface (python-cqrs's ``send_message``)."""

from __future__ import annotations

import abc
import dataclasses
import typing
import uuid

__all__ = ["Message", "MessageBroker"]


@dataclasses.dataclass
class Message:
    """One message for a broker.

    ``message_id`` is stable for a given event (a notification event's
    ``event_id``; an outbox row's id), so consumers can drop duplicates.
    ``headers`` carry it too, with the saga id and correlation id when known.
    """

    message_name: str
    topic: str
    payload: typing.Any
    message_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    payload_bytes: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] | None = None

    def to_dict(self) -> dict[str, typing.Any]:
        return {
            "message_name": self.message_name,
            "topic": self.topic,
            "payload": self.payload,
            "message_id": str(self.message_id),
            "headers": dict(self.headers or {}),
        }


class MessageBroker(abc.ABC):
    """Sends messages; raises if one could not be sent (the caller retries)."""

    @abc.abstractmethod
    async def send_message(self, message: Message) -> None:
        """Send ``message`` (at least once: a retry may send it again under the same id)."""
