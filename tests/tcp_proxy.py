"""A TCP proxy the tests control, between a client under test and a real broker.

`cut` closes every connection and the port (clients are refused, as by a
broker that went away) until `restore` opens the same port again.
`freeze_replies` stops passing the broker's bytes back to the clients (what
they sent still reaches the broker: a publish is stored, its confirm never
arrives) until `thaw`; `freeze_replies_after` does so by itself once the
clients sent a marker some number of times (say, the n-th message body). The
shared broker itself is never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies = asyncio.Event()
        self._replies.set()
        self.connections = 0
        self._marker: bytes | None = None
        self._marker_left = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        """Listen (on a free port the first time, on the same port after `cut`)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Close the port and every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def restore(self) -> None:
        """Open the port again, passing everything both ways."""
        self.thaw()
        await self.start()

    def freeze_replies(self) -> None:
        self._replies.clear()

    def freeze_replies_after(self, marker: bytes, count: int) -> None:
        """Freeze the replies as soon as the clients have sent ``marker`` ``count`` times (from now on)."""
        self._marker, self._marker_left = marker, count

    def _count_markers(self, data: bytes) -> None:
        if self._marker is not None:
            self._marker_left -= data.count(self._marker)
            if self._marker_left <= 0:
                self._marker = None
                self.freeze_replies()

    @property
    def frozen(self) -> bool:
        """Whether the broker's replies are held back now."""
        return not self._replies.is_set()

    def thaw(self) -> None:
        self._replies.set()

    async def close(self) -> None:
        self.thaw()
        await self.cut()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, broker_writer))
        upstream = asyncio.ensure_future(self._pipe(client_reader, broker_writer, replies=False))
        downstream = asyncio.ensure_future(self._pipe(broker_reader, client_writer, replies=True))
        self._tasks.update((upstream, downstream))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_writer, broker_writer):
                writer.close()
                self._writers.discard(writer)
            self._tasks.difference_update((upstream, downstream))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if replies:
                    await self._replies.wait()
                else:
                    self._count_markers(data)
                writer.write(data)
                await writer.drain()
