"""Background saga runs that outlive the request that started them, and their event feeds.

The saga is recorded (with this process's lease) before the request is
answered; the run continues in a task of the runtime. If the process dies,
the lease lapses and a recovery worker finishes the saga.
"""

from __future__ import annotations

import asyncio
import json
import logging
import typing
import uuid

from cqrs.saga import _serialization
from cqrs.saga.exceptions import SagaAlreadyRunningError
from cqrs.saga.hooks import Listener, SagaEvent
from cqrs.saga.mediator import SagaMediator, SagaOutcome
from cqrs.saga.storage.protocol import SagaStorage

logger = logging.getLogger("cqrs.integrations")


async def resume_quietly(
    mediator: SagaMediator,
    saga_id: uuid.UUID,
    *,
    listener: Listener | None = None,
    finisher: str = "recovery",
) -> SagaOutcome | None:
    """Run a recorded saga to its end in the background; errors are logged, not raised.

    A saga that stops here (storage down, shutdown) stays recoverable;
    ``finisher`` names what will finish it, for the log.
    """
    try:
        return await mediator.resume(saga_id, listener=listener)
    except asyncio.CancelledError:
        raise
    except SagaAlreadyRunningError:
        logger.info("Saga %s is being run elsewhere; leaving it", saga_id)
    except Exception:
        logger.exception("Background run of saga %s stopped; %s will finish it", saga_id, finisher)
    return None


#: Event kinds after which a run writes nothing more (the saga is final in storage).
FINAL_EVENTS = frozenset({"completed", "failed"})


def event_payload(event: SagaEvent) -> dict[str, typing.Any]:
    """A JSON-ready dict of a run event: ``type``, ``saga_id`` and what applies of
    ``step``, ``response``, ``error`` and ``status``."""
    payload: dict[str, typing.Any] = {"type": event.kind, "saga_id": str(event.saga_id)}
    if event.step_name is not None:
        payload["step"] = event.step_name
    if event.response is not None:
        payload["response"] = _serialization.dump_response(event.response)
    if event.error is not None:
        payload["error"] = event.error
    if event.status is not None:
        payload["status"] = event.status.value
    return payload


def sse_event(payload: dict[str, typing.Any]) -> str:
    """One Server-Sent Event: ``event: <type>`` and the payload as one JSON ``data:`` line."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


class SagaEventFeed:
    """Runs a recorded saga in the background (``spawn``) and queues its events for one reader.

    The run is a background task of the runtime, not of the reader: a reader
    that goes away (a client closing its stream) stops reading, the saga runs
    on to its end, and shutdown waits for it like for any background run.
    """

    def __init__(
        self,
        spawn: typing.Callable[[uuid.UUID, Listener], asyncio.Task[SagaOutcome | None]],
        storage: SagaStorage,
        saga_id: uuid.UUID,
    ) -> None:
        self.saga_id = saga_id
        self._storage = storage
        self._queue: asyncio.Queue[SagaEvent | None] = asyncio.Queue()
        self.task = spawn(saga_id, self._queue.put_nowait)
        self.task.add_done_callback(lambda _: self._queue.put_nowait(None))

    async def events(self, *, keepalive: float | None = None) -> typing.AsyncIterator[dict[str, typing.Any] | None]:
        """Yield `event_payload` dicts until a final event; None every ``keepalive`` seconds of silence.

        If the run stops without a final event (a storage error, shutdown, a
        saga that was already final or is run elsewhere), the last payload is
        built from the stored record: ``completed``/``failed`` for a final saga,
        else ``interrupted`` (the saga stays recoverable).
        """
        while True:
            try:
                event = await asyncio.wait_for(self._queue.get(), keepalive) if keepalive else await self._queue.get()
            except asyncio.TimeoutError:
                yield None
                continue
            if event is None:
                yield await self._stored_outcome()
                return
            if event.kind in ("started", "resumed"):
                continue
            yield event_payload(event)
            if event.kind in FINAL_EVENTS:
                return

    async def sse(self, start: dict[str, typing.Any], *, keepalive: float | None = 15.0) -> typing.AsyncIterator[str]:
        """The run as Server-Sent Events: ``start`` first, then each `events` payload (a comment line
        for each keepalive). Each event is ``event: <type>`` and one JSON ``data:`` line."""
        yield sse_event(start)
        async for payload in self.events(keepalive=keepalive):
            yield ": keepalive\n\n" if payload is None else sse_event(payload)

    async def _stored_outcome(self) -> dict[str, typing.Any]:
        from cqrs.saga.storage.enums import SagaStatus

        payload: dict[str, typing.Any] = {"saga_id": str(self.saga_id)}
        try:
            record = await self._storage.get_saga(self.saga_id)
        except Exception as error:
            logger.warning("Could not read saga %s after its run stopped", self.saga_id, exc_info=True)
            return {"type": "interrupted", **payload, "error": f"{type(error).__name__}: {error}"}
        if record is None:
            return {"type": "interrupted", **payload, "error": "the saga is not stored"}
        payload["status"] = record.status.value
        if record.status == SagaStatus.COMPLETED:
            return {"type": "completed", **payload}
        if record.error is not None:
            payload["error"] = record.error
        if record.status in (SagaStatus.FAILED, SagaStatus.COMPENSATION_FAILED):
            return {"type": "failed", **payload}
        payload.setdefault("error", "the run stopped before the saga finished; recovery will finish it")
        return {"type": "interrupted", **payload}
