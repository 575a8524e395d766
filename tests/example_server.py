"""An example app served as users run it: ``python main.py --port N`` in a subprocess.

Shared by the FastAPI and Flask end-to-end tests (and the Django ones for
`free_port`), with `stored` to read back what the app's storage holds.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from cqrs.config import open_storage
from cqrs.saga.storage.models import SagaLogEntry, SagaRecord


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ExampleServer:
    """The example ``main`` on a free loopback port, its output going to a file in ``tmp_path``."""

    def __init__(self, main: pathlib.Path, tmp_path: pathlib.Path, storage_url: str, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(main), "--port", str(self.port)],
            cwd=tmp_path,
            env={**os.environ, "CQRS_SAGA_STORAGE_URL": storage_url, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the example exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the example did not answer /health within {timeout}s:\n{self.output}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()


def stored(storage_url: str, limit: int = 1000) -> tuple[list[SagaRecord], dict[uuid.UUID, list[SagaLogEntry]]]:
    """Every saga in the database and its step history, read with the library's storage."""

    async def read() -> tuple[list[SagaRecord], dict[uuid.UUID, list[SagaLogEntry]]]:
        storage = await open_storage(storage_url, create_tables=False)
        try:
            records = await storage.list_sagas(limit=limit)
            return records, {r.saga_id: await storage.get_step_history(r.saga_id) for r in records}
        finally:
            await storage.close()

    return asyncio.run(read())
