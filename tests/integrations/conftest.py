"""Shared helpers of the framework integration tests (no framework imported here)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest

from kugelwire.server import ThreadedServer


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests of this directory on a fresh asyncio loop (the frameworks are
    asyncio-only)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True


def server_open_contexts(server: ThreadedServer) -> int:
    """Contexts open on the server right now, over all its connections (read on its loop)."""

    async def count() -> int:
        handle: Any = server.server
        peers = getattr(handle, "_conns", None)
        if peers is None:  # the server core keeps its connections itself
            peers = handle.core.connections
        total = 0
        for peer in list(peers):
            session = getattr(peer, "_session", None) or getattr(peer, "session", None)
            contexts = getattr(session, "contexts", None)
            if session is not None and contexts is None:
                raise AssertionError(f"cannot see the contexts of {session!r}")
            total += len(contexts or ())
        return total

    return int(server.call(count))  # on the server's own thread


def server_sessions(server: ThreadedServer) -> int:
    """Accepted WebSocket sessions open on the server (its ``stats()``)."""
    return int(server.stats()["sessions"])


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


#: What the tone engine takes for one word (see ``kugelwire.synth.ToneEngine``): 40 ms per
#: character, between 120 and 600 ms, then a 40 ms gap.
def tone_word_s(word: str) -> float:
    return (min(600.0, max(120.0, 40.0 * len(word))) + 40.0) / 1000.0


class DropProxy:
    """A loopback TCP proxy in front of a server whose connections can be cut at once
    (``drop()``: the sockets are aborted, as when a network path dies), while it keeps
    accepting new ones."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> DropProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
