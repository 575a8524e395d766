"""The transactional outbox: a step's notification events leave the process exactly when the step commits.

With ``outbox=True`` on the mediator (or `bootstrap`), the notification
events a step (or a compensation, or a saga's start) emits are written as
`OutboxMessage` rows in the same commit as the step's checkpoint; an
`OutboxRelay` publishes them to a message broker afterwards, at least once,
in order per saga, each under a stable message id. `run_relay` (and
``python -m cqrs.outbox``) runs a relay as a process's main work.
"""

from cqrs.outbox.messages import outbox_message
from cqrs.outbox.models import OutboxMessage, OutboxRecord, OutboxStatus
from cqrs.outbox.protocol import OutboxStorage
from cqrs.outbox.relay import OutboxRelay, RelayWaker
from cqrs.outbox.runner import run_relay

__all__ = [
    "OutboxMessage",
    "OutboxRecord",
    "OutboxRelay",
    "OutboxStatus",
    "OutboxStorage",
    "RelayWaker",
    "outbox_message",
    "run_relay",
]
