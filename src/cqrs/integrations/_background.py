"""Background saga runs that outlive the request that started them.

The saga is recorded (with this process's lease) before the request is
answered; the run continues in a task here. If the process dies, the lease
lapses and a recovery worker finishes the saga.
"""

from __future__ import annotations

import asyncio
import logging
import typing
import uuid

from cqrs.saga import _serialization
from cqrs.saga.exceptions import SagaAlreadyRunningError
from cqrs.saga.hooks import Listener, SagaEvent
from cqrs.saga.mediator import SagaMediator, SagaOutcome

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


class BackgroundRunner:
    """Keeps background saga tasks referenced and lets shutdown wait for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[SagaOutcome | None]] = set()

    def spawn(
        self, mediator: SagaMediator, saga_id: uuid.UUID, listener: Listener | None = None
    ) -> asyncio.Task[SagaOutcome | None]:
        """Run an already recorded saga in the background (``listener`` gets its `SagaEvent`s)."""
        task = asyncio.ensure_future(resume_quietly(mediator, saga_id, listener=listener))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for running sagas; cancel the ones still running after ``timeout``.

        Cancelled sagas write nothing more and stay recoverable.
        """
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


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


class SagaEventFeed:
    """Runs a recorded saga in a `BackgroundRunner` and queues its events for one reader.

    The run is a task of the runner, not of the reader: a reader that goes
    away (a client closing its stream) stops reading, the saga runs on to its
    end, and shutdown waits for it like for any background run.
    """

    def __init__(self, runner: BackgroundRunner, mediator: SagaMediator, saga_id: uuid.UUID) -> None:
        self.saga_id = saga_id
        self._storage = mediator.storage
        self._queue: asyncio.Queue[SagaEvent | None] = asyncio.Queue()
        self.task = runner.spawn(mediator, saga_id, self._queue.put_nowait)
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
