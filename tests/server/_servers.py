"""Every way to run our server, behind one handle, for the parametrised server suites: the four
backends (in a background thread) and the ASGI app under real uvicorn and real hypercorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kugelwire.server import BACKENDS, run_in_thread
from kugelwire.server.asgi import KugelwireASGI, create_app

ASGI = ("uvicorn", "hypercorn")
KINDS = (*BACKENDS, *ASGI)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AsgiServer:
    """uvicorn or hypercorn serving :func:`create_app` in a thread (its own asyncio loop)."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        self.app: KugelwireASGI = create_app(**options)
        self.port = _free_port()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._up = threading.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.app.core.connections)

    @property
    def peak_buffered(self) -> int:
        return self.app.core.peak_buffered

    def stats(self) -> dict[str, int]:
        return self.app.stats()

    def call(self, fn: Any) -> Any:
        assert self.loop is not None

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        self.call(lambda: self.app.shutdown(code, timeout))

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.kind == "uvicorn":
            import uvicorn

            config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                    log_level="warning", lifespan="off",
                                    ws_ping_interval=None)
            server = uvicorn.Server(config)
            task = asyncio.ensure_future(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            self._up.set()
            await self._stop.wait()
            server.should_exit = True
            await task
        else:
            from hypercorn.asyncio import serve
            from hypercorn.config import Config

            config = Config()
            config.bind = [f"127.0.0.1:{self.port}"]
            config.loglevel = "WARNING"
            config.graceful_timeout = 1
            task = asyncio.ensure_future(serve(self.app, config,  # type: ignore[arg-type]
                                               shutdown_trigger=self._stop.wait))
            await _wait_port(self.port)
            self._up.set()
            await task

    def __enter__(self) -> AsgiServer:
        self._thread.start()
        if not self._up.wait(15):
            raise RuntimeError(f"{self.kind} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.shutdown(1012, 5)
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


async def _wait_port(port: int) -> None:
    for _ in range(500):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def running(kind: str, **options: Any) -> Iterator[Any]:
    """A server of ``kind`` (a backend name or ``uvicorn`` / ``hypercorn``) for the block."""
    if kind in ASGI:
        pytest.importorskip(kind)
        with AsgiServer(kind, **options) as server:
            yield server
    else:
        with run_in_thread(backend=kind, **options) as server:  # type: ignore[arg-type]
            yield server


class AsyncView:
    """A running server seen from a test's event loop (``await shutdown``)."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self._server.shutdown, code, timeout)


@contextlib.asynccontextmanager
async def served(kind: str, **options: Any) -> AsyncIterator[AsyncView]:
    loop = asyncio.get_running_loop()
    cm = running(kind, **options)
    server = await loop.run_in_executor(None, cm.__enter__)
    try:
        yield AsyncView(server)
    finally:
        t0 = time.monotonic()
        await loop.run_in_executor(None, cm.__exit__, None, None, None)
        assert time.monotonic() - t0 < 30
