"""Message brokers: where notification events go (``send_message``), python-cqrs's interface.

Adapters for RabbitMQ, Redis Streams and NATS JetStream live in
`cqrs.message_brokers.<name>` (each a pip extra).
"""

from cqrs.message_brokers.devnull import DevnullMessageBroker
from cqrs.message_brokers.protocol import Message, MessageBroker

__all__ = ["DevnullMessageBroker", "Message", "MessageBroker"]
