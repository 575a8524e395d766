"""Saga ownership inside a process: the lease owner id, the per-process run guard, lease heartbeats.

The storage lease (owner + epoch, see `cqrs.saga.storage.protocol`) keeps two
processes from advancing one saga; `LocalRuns` keeps two coroutines of this
process from doing so; `Heartbeat` renews a run's lease while one of its
actions runs, driven by one `_Ticker` per event loop and lease length.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import typing
import uuid
import weakref

from cqrs.saga.exceptions import SagaAlreadyRunningError, SagaOwnershipLostError

__all__ = ["Heartbeat", "LeaseHolder", "LocalRuns", "local_runs", "process_owner", "tickers_of"]

logger = logging.getLogger("cqrs.saga")


class LeaseHolder(typing.Protocol):
    """What a heartbeat renews: a run holding a lease."""

    saga_id: uuid.UUID
    lease_lost: bool

    @property
    def lease_seconds(self) -> float: ...

    async def renew_lease(self) -> None:
        """Renew the lease; raises `SagaOwnershipLostError` if it was lost."""


_owner: str | None = None


def process_owner() -> str:
    """This process's lease owner id (host, pid and a random part; new after a fork)."""
    global _owner
    if _owner is None:
        pid = os.getpid()
        _owner = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
    return _owner


def _forget_owner() -> None:
    global _owner
    _owner = None


os.register_at_fork(after_in_child=_forget_owner)  # a forked child is another owner (no getpid per run)


class LocalRuns:
    """Runs of this process, so two coroutines never advance one saga together.

    The storage lease is per process; this is the per-coroutine guard under it.
    The newest claim wins: a paused stream superseded by a newer one stops.

    ``advancing`` names the run that is inside the engine for a saga: claiming
    it from the storage (`reserve`) or running a step or compensation (`hold_latest`).
    A run claims only while no other run of this process is advancing the
    saga: a claim by this process's owner bumps the lease epoch, which would
    fence a run that is mid-step, so its step would run again.
    """

    # Keyed by ``saga_id.int``: hashing a UUID runs Python code, and these run several times a step.

    def __init__(self) -> None:
        self.latest: dict[int, object] = {}
        self.advancing: dict[int, object] = {}

    def _busy(self, key: int, token: object) -> bool:
        holder = self.advancing.get(key)
        return holder is not None and holder is not token

    def reserve(self, saga_id: uuid.UUID, token: object) -> None:
        """Before claiming from the storage: refuse if another run is advancing the saga, else block them."""
        key = saga_id.int
        if self._busy(key, token):
            raise SagaAlreadyRunningError(saga_id)
        self.advancing[key] = token

    def claim(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self._busy(key, token):
            raise SagaAlreadyRunningError(saga_id)
        self.latest[key] = token

    def hold_latest(self, saga_id: uuid.UUID, token: object) -> bool:
        """Before a step or compensation: whether ``token`` still has the newest claim.

        Raises if another run of this process is advancing the saga now (it claimed it since).
        """
        key = saga_id.int
        advancing = self.advancing
        holder = advancing.get(key)
        if holder is not None and holder is not token:  # `_busy`, inlined: this runs on every step
            raise SagaOwnershipLostError(saga_id)
        advancing[key] = token
        return self.latest.get(key) is token

    def pause(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self.advancing.get(key) is token:
            del self.advancing[key]

    def is_latest(self, saga_id: uuid.UUID, token: object) -> bool:
        return self.latest.get(saga_id.int) is token

    def forget(self, saga_id: uuid.UUID, token: object) -> None:
        key = saga_id.int
        if self.latest.get(key) is token:
            del self.latest[key]
        if self.advancing.get(key) is token:
            del self.advancing[key]


local_runs = LocalRuns()


class _Ticker:
    """One timer per event loop and lease length, for every run whose action is running.

    It ticks every ``lease_seconds / 6`` while any action runs. An action that
    has run across two ticks has its lease renewed, and then every two ticks
    again: a renewal comes within ``lease_seconds / 3`` of the action's start
    and every ``lease_seconds / 3`` after. A run of short actions costs a
    dict entry per action and no timer of its own.
    """

    __slots__ = ("_handle", "acting", "interval", "ticks")

    # No reference to its loop: `_tickers` holds tickers by a weak reference to the loop.
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticks = 0
        #: Each acting run's heartbeat, and the tick count when it started acting or last renewed.
        self.acting: dict[Heartbeat, int] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, heartbeat: Heartbeat) -> None:
        self.acting[heartbeat] = self.ticks
        if self._handle is None:
            self.arm()

    def arm(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._handle = None
        if not self.acting:
            return  # re-armed by the next action
        self.ticks = ticks = self.ticks + 1
        for heartbeat, since in list(self.acting.items()):
            if ticks - since >= 2 and heartbeat.renew():
                self.acting[heartbeat] = ticks
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Ticker]] = weakref.WeakKeyDictionary()
#: The tickers of loops that cannot be weakly referenced (kept as long as the process).
_pinned_tickers: dict[asyncio.AbstractEventLoop, dict[float, _Ticker]] = {}


def tickers_of(loop: asyncio.AbstractEventLoop) -> dict[float, _Ticker]:
    """The tickers of ``loop``, by lease length."""
    try:
        by_lease = _tickers.get(loop)
        if by_lease is None:
            by_lease = _tickers[loop] = {}
    except TypeError:  # no weak references to this loop type
        by_lease = _pinned_tickers.setdefault(loop, {})
    return by_lease


def _ticker(lease_seconds: float) -> _Ticker:
    by_lease = tickers_of(asyncio.get_running_loop())
    ticker = by_lease.get(lease_seconds)
    if ticker is None:
        ticker = by_lease[lease_seconds] = _Ticker(lease_seconds / 6)
    return ticker


class Heartbeat:
    """Renews a run's lease while one of its actions (``act`` or ``compensate``) runs.

    One per run, used as ``async with`` around an action (or `begin` / `end`
    on the hot path); the loop's `_Ticker` decides when. It refers to its run
    weakly: the run holds it, and a cycle would leave every finished run for
    the cyclic garbage collector (whose passes then cost the hot path).
    """

    __slots__ = ("_run", "_task", "_ticker")

    def __init__(self, run: LeaseHolder) -> None:
        self._run: weakref.ReferenceType[LeaseHolder] = weakref.ref(run)
        self._task: asyncio.Task[None] | None = None
        self._ticker: _Ticker | None = None

    def begin(self) -> None:
        """An action starts."""
        ticker = self._ticker
        if ticker is None:
            ticker = self._ticker = _ticker(self._holder().lease_seconds)
        ticker.acting[self] = ticker.ticks  # `_Ticker.add`, inlined for the hot path
        if ticker._handle is None:
            ticker.arm()

    def end(self) -> asyncio.Future[None] | None:
        """An action ended; await what this returns (if anything) before the next write."""
        if self._ticker is not None:
            self._ticker.acting.pop(self, None)
        task = self._task
        if task is not None and not task.done():
            # The next write must not race a renewal of the same lease.
            return asyncio.shield(task)
        return None

    async def __aenter__(self) -> None:
        self.begin()

    async def __aexit__(self, *exc: object) -> None:
        renewal = self.end()
        if renewal is not None:
            await renewal

    def renew(self) -> bool:
        """Start renewing the lease, unless a renewal is still under way or the lease is lost;
        says whether it started one."""
        run = self._run()
        if run is None or run.lease_lost or (self._task is not None and not self._task.done()):
            return False
        self._task = asyncio.get_running_loop().create_task(self._renew(run))
        return True

    def _holder(self) -> LeaseHolder:
        run = self._run()
        assert run is not None, "a heartbeat is used by its run only"
        return run

    @staticmethod
    async def _renew(run: LeaseHolder) -> None:
        try:
            await run.renew_lease()
        except SagaOwnershipLostError:
            return
        except Exception:
            logger.warning("Could not renew the lease of saga %s; will retry", run.saga_id, exc_info=True)
