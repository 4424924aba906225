"""Fixtures for the transport scenario suite.

* ``h``: one harness per adapter (asyncio, trio, sync, and anyio on both of its backends:
  ``anyio-asyncio``, ``anyio-trio``; its task-group scoped ``connect_*`` is entered by the
  harness and left when the scenario's ``async with`` ends). Scenarios are written once as async
  functions; for the blocking adapter a thin shim wraps the sync API in coroutines that never
  suspend, and the scenario coroutine is stepped without any event loop.
* ``server`` / ``slow_server`` / ``auth_server``: :mod:`kugelwire.server` in a background thread.
* :class:`RestartServer`: a minimal loopback server built on the sans-IO core
  (``ServerConnection`` + server sessions + an instant engine) whose N-th connection closes with
  1012 at a chosen moment, for the restart policy tests (the real server's graceful shutdown
  also stops listening, so a reconnect could not land).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import trio

from kugelwire.protocol._server import (
    MultiServerSession,
    StreamServerSession,
    SynthesisRequested,
    TTSServerSession,
    _ServerSession,
)
from kugelwire.protocol._ws import ConnectionState, ServerConnection
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine
from kugelwire.transports import anyio as kw_anyio
from kugelwire.transports import asyncio as kw_asyncio
from kugelwire.transports import sync as kw_sync
from kugelwire.transports import trio as kw_trio

AUTH_KEY = "s3cr&t key+/=?%"
SCENARIO_TIMEOUT = 20.0


# -- harnesses ---------------------------------------------------------------------------------
class _Shim:
    """Async face of a sync API object (methods become never-suspending coroutines)."""

    _PLAIN = frozenset({"synthesize", "until_final"})

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._it: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        if name in self._PLAIN:
            return lambda *a, **k: _Shim(attr(*a, **k))

        async def call(*args: Any, **kwargs: Any) -> Any:
            return _wrap(attr(*args, **kwargs))

        return call

    def __aiter__(self) -> _Shim:
        self._it = iter(self._obj)
        return self

    async def __anext__(self) -> Any:
        assert self._it is not None
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _Shim:
        self._obj.__enter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._obj.__exit__(*exc)


class _Entered:
    """An entered anyio ``connect_*``: the client's API, and ``async with`` / ``close()`` /
    ``aclose()`` that also leave the connection's task group."""

    def __init__(self, scoped: Any, client: Any) -> None:
        self._scoped, self._obj = scoped, client
        self._left = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    async def _leave(self, *exc: Any) -> None:
        if not self._left:
            self._left = True
            await self._scoped.__aexit__(*exc)

    async def close(self) -> None:
        await self._obj.close()
        await self._leave(None, None, None)

    async def aclose(self) -> None:
        await self._obj.aclose()
        await self._leave(None, None, None)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._leave(*exc)


def _wrap(value: Any) -> Any:
    api = (kw_sync.Stream, kw_sync.Multi, kw_sync.TTS, kw_sync.Events)
    return _Shim(value) if isinstance(value, api) else value


class Harness:
    """Runs one scenario on one adapter; ``connect_*`` and ``sleep`` are awaitable in all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._mod: Any = {
            "asyncio": kw_asyncio, "trio": kw_trio, "sync": kw_sync,
            "anyio-asyncio": kw_anyio, "anyio-trio": kw_anyio,
        }[name]

    def __repr__(self) -> str:
        return self.name

    async def connect_stream(self, url: str, **kw: Any) -> Any:
        return await self._connect("connect_stream", url, kw)

    async def connect_multi(self, url: str, **kw: Any) -> Any:
        return await self._connect("connect_multi", url, kw)

    async def connect_tts(self, url: str, **kw: Any) -> Any:
        return await self._connect("connect_tts", url, kw)

    async def _connect(self, fn: str, url: str, kw: dict[str, Any]) -> Any:
        result = getattr(self._mod, fn)(url, **kw)
        if self.name == "sync":
            return _Shim(result)
        if self.name.startswith("anyio"):
            client = await result.__aenter__()
            return _Entered(result, client)
        return await result

    async def sleep(self, seconds: float) -> None:
        if self.name.startswith("anyio"):
            await anyio.sleep(seconds)
        elif self.name == "asyncio":
            await asyncio.sleep(seconds)
        elif self.name == "trio":
            await trio.sleep(seconds)
        else:
            time.sleep(seconds)

    def run(self, scenario: Callable[[], Awaitable[Any]], timeout: float = SCENARIO_TIMEOUT) -> Any:
        if self.name == "asyncio":
            return asyncio.run(asyncio.wait_for(_coro(scenario), timeout))
        if self.name == "trio":

            async def main() -> Any:
                with trio.fail_after(timeout):
                    return await scenario()

            return trio.run(main)
        if self.name.startswith("anyio"):

            async def amain() -> Any:
                with anyio.fail_after(timeout):
                    return await scenario()

            return anyio.run(amain, backend=self.name.split("-")[1])
        coro = _coro(scenario)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise AssertionError("a sync scenario suspended (used a real awaitable)")


async def _coro(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return await scenario()


ADAPTERS = ["asyncio", "trio", "sync", "anyio-asyncio", "anyio-trio"]


@pytest.fixture(params=ADAPTERS)
def h(request: pytest.FixtureRequest) -> Harness:
    return Harness(request.param)


# -- servers -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread() as handle:
        yield handle


@pytest.fixture(scope="session")
def slow_server() -> Iterator[ThreadedServer]:
    with run_in_thread(engine=ToneEngine(realtime_factor=0.5)) as handle:
        yield handle


@pytest.fixture(scope="session")
def auth_server() -> Iterator[ThreadedServer]:
    with run_in_thread(api_key=AUTH_KEY) as handle:
        yield handle


class RestartServer:
    """Loopback server on the sans-IO core. ``plan[i]`` says what connection ``i`` does:
    ``"normal"``; ``"restart_before_audio"`` (close 1012 when the first chunk reaches the
    engine); ``"restart_after_first_chunk"`` (speak chunk 0, close 1012 at chunk 1).

    Drops (for ``reconnect=True``): ``"<how>_before_audio"`` / ``"<how>_after_first_chunk"``
    with ``<how>`` ``reset`` (TCP reset, no close frame) or ``close<code>`` (e.g. ``close1011``,
    ``close4000``); ``"reset_after_final"`` (every frame up to ``final`` is sent, then the
    reset, before ``session_closed``); ``"reset_mid_context_b"`` (multi: reset when the second
    chunk of context ``b`` reaches the engine, after ``b`` had audio).
    ``refuse`` connections are accepted and reset at once (a server that is down)."""

    def __init__(self, plan: list[str]) -> None:
        self.plan = plan
        self.connections = 0
        self.texts: list[list[str]] = []  # chunk texts the engine saw, per connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> RestartServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await self._loop.create_server(lambda: _RestartProto(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        self._server.close()


def _before_frame(data: bytes, marker: bytes) -> bytes:
    """``data`` (unmasked server frames) up to the first frame whose payload has ``marker``."""
    i = 0
    while i < len(data):
        n, head = data[i + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[i + 2 : i + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[i + 2 : i + 10], "big"), 10
        if marker in data[i + head : i + head + n]:
            return data[:i]
        i += head + n
    return data


class _RestartProto(asyncio.Protocol):
    def __init__(self, server: RestartServer) -> None:
        self.server = server
        self.index = server.connections
        server.connections += 1
        server.texts.append([])
        self.mode = server.plan[self.index] if self.index < len(server.plan) else "normal"
        self.session: _ServerSession | None = None
        self.conn = ServerConnection(self._route, now=time.monotonic())
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.dropped = False
        self.context_chunks: dict[str, int] = {}

    def _route(self, path: str) -> _ServerSession | None:
        cls = {"/ws/tts/stream": StreamServerSession, "/ws/tts/multi": MultiServerSession,
               "/ws/tts": TTSServerSession}.get(path)
        self.session = None if cls is None else cls()
        return self.session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connection_made_checked()

    def connection_made_checked(self) -> bool:
        if self.mode == "refuse":
            self._reset()
            return False
        return True

    def _reset(self) -> None:
        """Drop the TCP connection without a close frame (RST: SO_LINGER 0)."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        self.dropped = True

    def _drop(self) -> None:
        """End the connection the way the plan says (a reset or a close code)."""
        how = self.mode.split("_", 1)[0]
        if how == "reset":  # what was produced goes out first; the reset follows shortly
            assert self.transport is not None
            self.transport.write(self.conn.data_to_send())
            self.dropped = True
            asyncio.get_running_loop().call_later(0.05, self._reset)
        elif how.startswith("close"):
            self.conn.close(int(how[5:]), "dropping")
        else:
            self.conn.close(1012, "restarting")

    def data_received(self, data: bytes) -> None:
        if self.dropped:
            return
        self.conn.receive_data(data, time.monotonic())
        self._pump()

    def eof_received(self) -> bool:
        if not self.dropped:
            self.conn.receive_data(b"", time.monotonic())
            self._pump()
        return False

    def _on_timer(self) -> None:
        if self.dropped:
            return
        self.conn.handle_timeout(time.monotonic())
        self._pump()

    def _pump(self) -> None:
        for _ in self.conn.events():
            pass
        session, now = self.session, time.monotonic()
        while session is not None and self.conn.state is ConnectionState.OPEN:
            requests = [e for e in session.events() if isinstance(e, SynthesisRequested)]
            if not requests:
                break
            for req in requests:
                seen = self.server.texts[self.index]
                seen.append(req.chunk.text)
                cid = getattr(req.ref, "context_id", None) or ""
                self.context_chunks[cid] = self.context_chunks.get(cid, 0) + 1
                if (self.mode.endswith("_before_audio") or
                        (self.mode.endswith("_after_first_chunk") and len(seen) > 1) or
                        (self.mode == "reset_mid_context_b" and self.context_chunks.get("b") == 2)):
                    self._drop()
                    if self.dropped:
                        return
                    break
                sr = req.params.sample_rate
                session.send_audio(req.ref, bytes(2 * max(1, sr * len(req.chunk.text) // 100)), now)
                session.complete_chunk(req.ref, 1.0, now)
        assert self.transport is not None
        out = self.conn.data_to_send()
        if self.mode == "reset_after_final" and b'"session_closed"' in out:
            self.transport.write(_before_frame(out, b'"session_closed"'))
            self.dropped = True
            asyncio.get_running_loop().call_later(0.05, self._reset)
            return
        if out:
            self.transport.write(out)
        if self.conn.state is ConnectionState.CLOSED:
            self.transport.close()
            return
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.conn.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)
