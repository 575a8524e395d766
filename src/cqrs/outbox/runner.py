"""Running a relay as a process's main work: `run_relay` (for ``python -m cqrs.outbox``, CLIs, lifespans, commands).

    relay = await run_relay("postgresql+asyncpg://app@db/app", "myapp.brokers:make_broker", handle_signals=True)

``broker`` is a `MessageBroker`, or what makes one: a callable (a class, a
function, an async function) called with no arguments, or a
``"package.module:name"`` string naming either. A broker that is an async
context manager is entered for the relay's life and exited when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import typing

from cqrs.message_brokers.protocol import MessageBroker
from cqrs.outbox.protocol import OutboxStorage
from cqrs.outbox.relay import OutboxRelay

__all__ = ["BrokerSource", "load_object", "open_broker", "run_relay"]

#: A broker, what makes one, or the ``"package.module:name"`` of either.
BrokerSource = MessageBroker | typing.Callable[[], typing.Any] | str


def load_object(spec: str) -> typing.Any:
    """The object ``"package.module:name"`` names (`cqrs.saga.apps.load_object`; ``ValueError`` if none)."""
    from cqrs.saga.apps import load_object as load

    return load(spec)


@contextlib.asynccontextmanager
async def open_broker(source: BrokerSource) -> typing.AsyncIterator[MessageBroker]:
    """The broker ``source`` gives, entered if it is an async context manager (and exited afterwards)."""
    made: typing.Any = load_object(source) if isinstance(source, str) else source
    if isinstance(made, type) or (callable(made) and not callable(getattr(made, "send_message", None))):
        made = made()  # a class, or a function that makes the broker
    if inspect.isawaitable(made):
        made = await made
    async with contextlib.AsyncExitStack() as stack:
        if hasattr(made, "__aenter__") and hasattr(made, "__aexit__"):
            made = await stack.enter_async_context(made)
        if not callable(getattr(made, "send_message", None)):
            raise TypeError(f"{source!r} gave {made!r}, which has no send_message: not a message broker")
        yield typing.cast(MessageBroker, made)


async def run_relay(
    storage: str | OutboxStorage,
    broker: BrokerSource,
    *,
    once: bool = False,
    create_tables: bool = False,
    handle_signals: bool = False,
    stop: asyncio.Event | None = None,
    **relay_options: typing.Any,
) -> OutboxRelay:
    """Publish the outbox of ``storage`` through ``broker`` until stopped; returns the relay (its counts).

    ``storage`` is a storage URL (``postgresql://``, ``sqlite:///``, ``mysql://``... as `cqrs.config`
    takes them; the storage is closed at the end) or an `OutboxStorage` (left open).
    ``relay_options`` go to `OutboxRelay` (``batch_size``, ``lease_seconds``, ``poll_interval``,
    ``retry``, ``publish_timeout``, ``owner``). It stops when ``stop`` is set, on SIGTERM or SIGINT
    with ``handle_signals`` (main thread only), or with ``once`` when nothing is due any more.
    ``create_tables`` creates missing saga and outbox tables first.
    """
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(storage, str):
            from cqrs.config import open_storage

            opened = await open_storage(storage, create_tables=create_tables)
            stack.push_async_callback(opened.close)
            if not isinstance(opened, OutboxStorage):  # pragma: no cover - every shipped storage is one
                raise TypeError(f"The storage of {storage!r} has no outbox")
            storage = opened
        publisher = await stack.enter_async_context(open_broker(broker))
        relay = OutboxRelay(storage, publisher, **relay_options)
        if once:
            await relay.drain()
            return relay
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, relay.stop)
                stack.callback(loop.remove_signal_handler, signum)
        if stop is not None:
            watcher = asyncio.ensure_future(_stop_when_set(stop, relay))
            stack.callback(watcher.cancel)
        await relay.run()
    return relay


async def _stop_when_set(stop: asyncio.Event, relay: OutboxRelay) -> None:
    await stop.wait()
    relay.stop()
