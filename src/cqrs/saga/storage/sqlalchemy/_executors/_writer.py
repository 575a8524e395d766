"""A thread of its own that runs functions one after another for asyncio callers: SQLite's writer thread.

`WriterThread.call` queues a function and returns a future of the caller's
event loop; the thread runs the queued functions in order and hands each
result (or exception) back with ``loop.call_soon_threadsafe``: one hop there
and one back per call, as aiosqlite does for each statement.

The thread is a daemon, unlike ``concurrent.futures``' workers: the web
integrations close their storages in ``atexit`` handlers, which run after
the interpreter has joined its non-daemon threads and stopped
``concurrent.futures`` from taking work, and those last writes must still
run. A transaction the interpreter's end cuts short is rolled back by SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import typing

__all__ = ["WriterThread"]

T = typing.TypeVar("T")
_Job = tuple[typing.Callable[..., typing.Any], tuple[typing.Any, ...], "asyncio.Future[typing.Any]"]


class WriterThread:
    """One daemon thread running the functions given to `call`, in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: typing.Callable[..., T], *args: typing.Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; a future of the running loop for its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, future))
        return future

    def stop(self) -> None:
        """End the thread once the calls queued so far have run, and wait for it."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future = job
            try:
                result = fn(*args)
            except BaseException as error:  # the caller's to see, whatever it is
                _hand_back(future, None, error)
            else:
                _hand_back(future, result, None)


def _hand_back(future: asyncio.Future[typing.Any], result: typing.Any, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits for it any more
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[typing.Any], result: typing.Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller stopped waiting; the call ran all the same
        return
    if isinstance(error, StopIteration):  # a future refuses it (it would end the awaiting coroutine quietly)
        wrapped = RuntimeError(f"A call on the writer thread raised StopIteration: {error!r}")
        wrapped.__cause__ = error
        error = wrapped
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
