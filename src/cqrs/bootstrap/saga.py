"""The saga `bootstrap` under python-cqrs 5's path."""

from cqrs.message_brokers.devnull import DevnullMessageBroker
from cqrs.saga.bootstrap import bootstrap

__all__ = ["DEFAULT_MESSAGE_BROKER", "bootstrap"]

#: python-cqrs's name for the broker used when none is given (one that drops messages).
DEFAULT_MESSAGE_BROKER = DevnullMessageBroker()
