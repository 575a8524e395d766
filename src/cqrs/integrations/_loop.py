"""One long-lived event loop per process, in a daemon thread, for synchronous frameworks.

Flask and Django views are plain functions on server threads; they submit
coroutines here and block on the result. No loop is created or closed per
request, and many request threads can wait at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import typing

T = typing.TypeVar("T")


class LoopThread:
    """An event loop running forever in a background thread (recreated after fork)."""

    def __init__(self, name: str = "cqrs-saga-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not self._loop.is_running():
                self._start()
            assert self._loop is not None
            return self._loop

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=self._name, daemon=True)
        thread.start()
        started.wait()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()

    def submit(self, coro: typing.Coroutine[typing.Any, typing.Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future.

        ``coro`` runs in a copy of the caller's context (`asyncio.run_coroutine_threadsafe`
        schedules it with one), so the caller's correlation id goes along.
        """
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: typing.Coroutine[typing.Any, typing.Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block this thread until it finishes."""
        if self._in_loop_thread():
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own loop; await the coroutine instead")
        return self.submit(coro).result(timeout)

    def _in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def stop(self) -> None:
        """Stop the loop and join its thread (at process shutdown)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None and self._pid == os.getpid():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not loop.is_running():
                loop.close()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop_thread() -> LoopThread:
    """The process-wide `LoopThread` the synchronous integrations share.

    Created on first use; its loop is stopped by an ``atexit`` hook registered
    then, so hooks registered afterwards (which run first) can still use it.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            import atexit

            _shared = LoopThread()
            atexit.register(_shared.stop)
        return _shared


def block(
    coro: typing.Coroutine[typing.Any, typing.Any, T],
    timeout: float | None = None,
    *,
    refuse: typing.Callable[[str], BaseException] | None = None,
) -> T:
    """Run ``coro`` on the shared saga loop and wait for it, from synchronous code.

    The caller's context (its correlation id) goes along. With ``refuse``,
    code running an event loop in this thread gets ``refuse(message)``
    instead (Django's rule: a blocking call there would stall that loop).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if refuse is None:
            return shared_loop_thread().run(coro, timeout)
        coro.close()
        raise refuse(
            "This saga helper blocks; from async code use its awaitable twin "
            "(arun_saga, astart_saga, asaga_status, ...)"
        )
    return shared_loop_thread().run(coro, timeout)


async def await_in_loop(coro: typing.Coroutine[typing.Any, typing.Any, T]) -> T:
    """Run ``coro`` on the shared saga loop and await it from another loop (an async view's).

    If the awaiting code is cancelled (the client went away), the work still runs to its end.
    """
    future = shared_loop_thread().submit(coro)
    return await asyncio.shield(asyncio.wrap_future(future))


def iterate(
    agen: typing.AsyncIterator[T], *, refuse: typing.Callable[[str], BaseException] | None = None
) -> typing.Iterator[T]:
    """Iterate an async iterator that lives on the shared saga loop, from synchronous code (a streamed body)."""
    try:
        while True:
            try:
                yield block(_next(agen), refuse=refuse)
            except StopAsyncIteration:
                return
    finally:
        close = getattr(agen, "aclose", None)
        if close is not None:
            block(close(), refuse=refuse)


async def _next(agen: typing.AsyncIterator[T]) -> T:
    return await agen.__anext__()
