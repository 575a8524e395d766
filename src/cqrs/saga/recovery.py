"""Finishing interrupted sagas: `recover_saga` for one, `RecoveryWorker` for all."""

from __future__ import annotations

import asyncio
import logging
import signal
import typing
import uuid

from cqrs.saga._hookset import call_hooks
from cqrs.saga._ownership import process_owner
from cqrs.saga._run import SagaRun
from cqrs.saga.exceptions import (
    ContextDeserializationError,
    SagaCompensatedError,
    SagaOwnershipLostError,
)
from cqrs.saga.hooks import Listener, error_text
from cqrs.saga.map import SagaMap
from cqrs.saga.mediator import SagaMediator
from cqrs.saga.retry import RetryPolicy
from cqrs.saga.saga import Saga
from cqrs.saga.settings import EngineSettings
from cqrs.saga.storage.enums import SagaStatus
from cqrs.saga.storage.models import Lease, SagaClaim, SagaRecord
from cqrs.saga.storage.protocol import SagaStorage

if typing.TYPE_CHECKING:
    from cqrs.events import EventMap

__all__ = ["RecoveryWorker", "recover_saga"]

logger = logging.getLogger("cqrs.recovery")

JsonDict = dict[str, typing.Any]


async def recover_saga(
    saga: Saga[typing.Any] | type[Saga[typing.Any]],
    saga_id: uuid.UUID,
    context_builder: typing.Callable[[JsonDict], typing.Any] | type[typing.Any] | None,
    container: typing.Any,
    storage: SagaStorage,
    *,
    compensation_retry: RetryPolicy | None = None,
    lease_seconds: float = 30.0,
    listener: Listener | None = None,
    hooks: typing.Iterable[object] = (),
    event_map: EventMap | None = None,
    mediator: SagaMediator | None = None,
) -> None:
    """Finish one interrupted saga from where its storage says it stands.

    A ``running`` saga continues from its first step without a completion
    record, with the stored context (built by ``context_builder``: the context
    class, or a function of the stored dict). A ``compensating`` saga finishes
    compensating and never runs forward again; a ``compensation_failed`` one
    retries its failed compensations. A completed saga is left alone.

    The run is built by ``mediator`` when given (its hooks, event handlers and
    settings apply); otherwise by a mediator made from ``container``,
    ``storage``, ``hooks`` and ``event_map``.

    Raises `SagaCompensatedError` (a `RuntimeError`) when the saga ended
    compensated, `SagaNotFoundError` for an unknown id, and
    `SagaAlreadyRunningError` when another runner holds it.
    """
    saga_type = saga if isinstance(saga, type) else type(saga)
    if mediator is None:
        saga_map = SagaMap()
        saga_map.register(saga_type)
        mediator = SagaMediator(
            saga_map,
            container,
            storage=storage,
            settings=EngineSettings(lease_seconds=lease_seconds),
            hooks=hooks,
            event_map=event_map,
        )
    await mediator.recover(
        saga_type, saga_id, context_builder=context_builder, compensation_retry=compensation_retry, listener=listener
    )


class RecoveryWorker:
    """Claims sagas whose runner died and finishes them; run any number of them.

    Each pass claims up to ``batch_size`` sagas whose lease expired, with
    their histories, in one statement on PostgreSQL (``FOR UPDATE SKIP
    LOCKED``, so workers never claim the same saga), and recovers up to
    ``concurrency`` at once. `run` claims the next batch while the last one
    runs, once no more than half a batch waits for a slot. A saga claimed
    more than ``max_attempts`` times is parked for an operator. Storage
    errors are not saga failures: the lease lapses and a later pass tries
    again.

    Each claim is logged at INFO and each parked saga at ERROR on the
    ``cqrs.recovery`` logger, with the fields ``saga_id``, ``saga_name``,
    ``correlation_id`` and ``recovery_attempt`` as ``extra``; the mediator's
    hooks are told through ``recovery_claimed`` and ``saga_parked``.
    """

    def __init__(
        self,
        mediator: SagaMediator | SagaMap | typing.Iterable[type[Saga[typing.Any]]],
        container: typing.Any = None,
        storage: SagaStorage | None = None,
        *,
        settings: EngineSettings | None = None,
        batch_size: int = 20,
        concurrency: int = 8,
        poll_interval: float = 5.0,
        max_attempts: int = 10,
        shutdown_grace: float = 10.0,
    ) -> None:
        if not isinstance(mediator, SagaMediator):
            # The convenience form: a mediator made from the sagas, container and storage given.
            if storage is None:
                raise TypeError("RecoveryWorker(sagas, container, storage): a storage is required")
            saga_map = mediator if isinstance(mediator, SagaMap) else _registered(mediator)
            mediator = SagaMediator(saga_map, container, storage=storage, settings=settings)
        elif container is not None or storage is not None or settings is not None:
            raise TypeError("RecoveryWorker(mediator) takes its container, storage and settings from the mediator")
        self.mediator = mediator
        self.saga_map = mediator.saga_map
        self.storage = mediator.storage
        self.settings = mediator.settings
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.shutdown_grace = shutdown_grace
        self._semaphore = asyncio.Semaphore(concurrency)
        #: `run` claims the next batch while at most this many claimed sagas are unfinished (running or
        #: waiting for a slot): every slot stays busy while the claim is under way, and a claimed saga
        #: waits for at most a batch and a half before it runs (its lease is only renewed while it runs).
        self._claim_at = concurrency + batch_size // 2
        self._stop = asyncio.Event()
        self.recovered: dict[str, int] = {}
        self._hooks = mediator.hook_set

    def stop(self) -> None:
        """Ask `run` to stop claiming and return once in-flight sagas are done."""
        self._stop.set()

    def install_signal_handlers(
        self, on_signal: typing.Callable[[signal.Signals], None] | None = None
    ) -> list[signal.Signals]:
        """Stop gracefully on SIGTERM and SIGINT (call from the running loop, in the main thread).

        ``on_signal`` is called with the signal first (to say so, say). Returns
        the signals handled; one the loop cannot handle here (not the main
        thread, a platform without them) is left out.
        """
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            if on_signal is not None:
                on_signal(sig)
            self.stop()

        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop, sig)
            except (ValueError, RuntimeError, NotImplementedError):
                continue
            installed.append(sig)
        return installed

    async def run(self) -> None:
        """Recover in passes until `stop`; in-flight sagas get ``shutdown_grace`` seconds to finish."""
        in_flight: set[asyncio.Task[None]] = set()
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                if len(in_flight) > self._claim_at:
                    # More than half a batch is claimed and waiting for a slot: claim again once one is done.
                    await asyncio.wait({*in_flight, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    claimed = await self._claim()
                except Exception:
                    logger.warning("Recovery claim failed; retrying after %.1fs", self.poll_interval, exc_info=True)
                    claimed = []
                for record in claimed:
                    task = asyncio.ensure_future(self._recover_guarded(record))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if len(claimed) < self.batch_size:
                    await asyncio.wait({stopping}, timeout=self.poll_interval)
        finally:
            stopping.cancel()
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def run_once(self) -> int:
        """One pass: claim a batch and recover it; returns how many were claimed."""
        claimed = await self._claim()
        await asyncio.gather(*(self._recover_guarded(record) for record in claimed))
        return len(claimed)

    async def _claim(self) -> list[SagaClaim]:
        return await self.storage.claim_recoverable(
            process_owner(),
            self.settings.lease_seconds,
            limit=self.batch_size,
            names=[saga_type.name for saga_type in self.saga_map.sagas()],
        )

    async def _recover_guarded(self, claim: SagaClaim) -> None:
        async with self._semaphore:
            outcome = await self._recover(claim)
        self.recovered[outcome] = self.recovered.get(outcome, 0) + 1

    async def _recover(self, claim: SagaClaim) -> str:
        """Recover one claimed saga; returns a word for the tally."""
        record = claim.record
        lease = claim.lease or Lease(owner=record.owner or process_owner(), epoch=record.lease_epoch)
        fields = _record_fields(record)
        logger.info(
            "Saga %s (%s) claimed for recovery: %s, attempt %d",
            record.saga_id, record.name, record.status.value, record.recovery_attempts, extra=fields,
        )
        if self._hooks.recovery_claimed:
            await _tell(self._hooks.recovery_claimed, record)
        saga_type = self.saga_map.by_name(record.name)
        if saga_type is None or saga_type.version != record.definition_version:
            logger.error(
                "Saga %s is %r version %d, which this worker does not know; leaving it untouched",
                record.saga_id, record.name, record.definition_version,
            )
            await self._release(record, lease)
            return "unknown"
        if record.recovery_attempts > self.max_attempts:
            # Each attempt's error was logged (with the saga id) by the worker that made it.
            reason = (
                f"parked after {record.recovery_attempts - 1} recovery attempts that did not finish it "
                "(each attempt's error is in the recovery workers' logs under this saga id)"
            )
            if record.error:
                reason += f"; the saga's own error: {record.error}"
            logger.error("Saga %s %s", record.saga_id, reason, extra=fields)
            await self.storage.park_saga(record.saga_id, reason)
            if self._hooks.saga_parked:
                await _tell(self._hooks.saga_parked, record, reason)
            return "parked"
        run: SagaRun | None = None
        try:
            run = await self.mediator.take_over(claim)
            async for _ in run.advance():
                pass
        except asyncio.CancelledError:
            await self._release(record, lease)
            raise
        except ContextDeserializationError as error:
            logger.error("Saga %s cannot be recovered: %s", record.saga_id, error)
            await self._release(record, lease)
            return "undeserialisable"
        except SagaOwnershipLostError:
            return "lost"
        except SagaCompensatedError:
            return str(run.status) if run is not None else "error"
        except Exception as error:
            if run is not None and run.status in (SagaStatus.FAILED, SagaStatus.COMPENSATION_FAILED):
                return str(run.status)
            logger.warning(
                "Recovery of saga %s interrupted (%s); it stays recoverable",
                record.saga_id, error_text(error), exc_info=True,
            )
            await self._release(record, lease)
            return "error"
        return str(run.status)

    async def _release(self, record: SagaRecord, lease: Lease) -> None:
        try:
            await self.storage.release_lease(record.saga_id, lease)
        except Exception:
            logger.warning("Could not release saga %s; its lease will lapse", record.saga_id, exc_info=True)


def _record_fields(record: SagaRecord) -> dict[str, typing.Any]:
    return {
        "saga_id": str(record.saga_id),
        "saga_name": record.name,
        "correlation_id": record.correlation_id,
        "step": None,
        "recovery_attempt": record.recovery_attempts,
    }


async def _tell(methods: tuple[typing.Callable[..., typing.Any], ...], *args: object) -> None:
    """A recovery hook point: a failing hook is logged, not allowed to stop recovery."""
    try:
        hooked = call_hooks(methods, *args)
        if hooked is not None:
            await hooked
    except Exception:
        logger.warning("A recovery hook failed", exc_info=True)


def _registered(sagas: typing.Iterable[type[Saga[typing.Any]]]) -> SagaMap:
    saga_map = SagaMap()
    for saga_type in sagas:
        saga_map.register(saga_type)
    return saga_map
