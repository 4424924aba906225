"""trio transport for the three client roles; the same API as :mod:`kugelwire.transports.asyncio`.

    async with await connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = await stream.send_text("Hello world.", flush=True)
        async for event in turn: ...

The connection's reader and timer tasks run as a trio *system task* (so ``connect_*`` can return
a plain object, like the asyncio adapter); they never raise and are cancelled by ``close()`` or
when the run ends. Writes are serialised by a lock and happen at once; ``synthesize`` (a plain
function) hands its bytes to the timer task, which writes them immediately.

Backpressure policy (as in every adapter): events wait in bounded per-turn / per-request /
per-context buffers; above ``max_buffered_bytes`` of audio the reader stops reading, so TCP flow
control slows the server. Memory stays bounded and audio is never dropped. Only typed exceptions
of :mod:`kugelwire.errors` (and ``LocalProtocolError``) escape.
"""

from __future__ import annotations

import contextlib
import math
import ssl as _ssl
from typing import Any, Literal, TypeVar

import trio

from ..errors import ConnectionFailed
from ..protocol._events import ClientEvent
from ._core import (
    AsyncContext,
    AsyncMulti,
    AsyncRequest,
    AsyncStream,
    AsyncTTS,
    AsyncTurn,
    ClientCore,
    EventBuffer,
    Kind,
)

__all__ = [
    "AsyncContext",
    "AsyncMulti",
    "AsyncRequest",
    "AsyncStream",
    "AsyncTTS",
    "AsyncTurn",
    "connect_multi",
    "connect_stream",
    "connect_tts",
]

_READ_SIZE = 65536
_T = TypeVar("_T", AsyncStream, AsyncMulti, AsyncTTS)
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _ssl.SSLError)


class _Driver:
    """One stream (at a time), a reader task and a timer/writer task for a ClientCore."""

    def __init__(
        self,
        core: ClientCore,
        ssl: _ssl.SSLContext | None,
        connect_timeout: float,
        close_timeout: float,
    ) -> None:
        self.core = core
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._signal = trio.Event()
        self._stream: trio.abc.Stream | None = None
        self._generation = -1
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._started = False

    # -- AsyncDriver ---------------------------------------------------------------------------
    def now(self) -> float:
        return trio.current_time()

    def kick(self) -> None:
        self._changed()  # the timer task writes

    async def send(self) -> None:
        async with self._send_lock:  # look at the stream under the lock: it may change
            stream = self._stream
            current = stream is not None and self._generation == self.core.generation
            data = self.core.data_to_send() if current else b""
            if data and stream is not None:
                with contextlib.suppress(*_IO_ERRORS):  # the reader sees it as EOF
                    await stream.send_all(data)
        self._changed()

    async def next_event(self, buf: EventBuffer) -> ClientEvent | None:
        while not buf.exhausted:
            signal = self._signal
            paused = self.core.reading_paused
            event = self.core.pop(buf)
            if event is not None:
                if paused:
                    self._changed()
                return event
            if buf.exhausted:
                break
            await signal.wait()
        return None

    async def close(self, *, abort: bool = False) -> None:
        core = self.core
        if not abort and not core.finished:
            core.close_socket(self.now())
            await self.send()
            with trio.move_on_after(self._close_timeout):
                while not core.finished:
                    await self._signal.wait()
        core.abort(self.now(), "closed")
        self._changed()
        self._scope.cancel()
        if self._started:
            await self._stopped.wait()
        else:
            await self._close_stream()

    # -- internals -----------------------------------------------------------------------------
    def _changed(self) -> None:
        self._signal.set()
        self._signal = trio.Event()

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                with contextlib.suppress(*_IO_ERRORS):
                    await stream.aclose()

    async def _open(self) -> None:
        host, port = self.core.address
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                if self.core.secure:
                    ctx = self._ssl if self._ssl is not None else _ssl.create_default_context()
                    ssl_stream = trio.SSLStream(stream, ctx, server_hostname=host)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
        except (*_IO_ERRORS, trio.TooSlowError, ValueError) as exc:
            self.core.connect_failed(exc, self.now())
            self._changed()
            return
        self._stream = stream
        self._generation = self.core.generation
        self.core.socket_opened(self.now())
        await self.send()

    async def start(self) -> None:
        core = self.core
        with trio.move_on_after(self._connect_timeout) as scope:
            await self._open()
            if not core.finished:
                trio.lowlevel.spawn_system_task(self._run)
                self._started = True
                while core.state in ("connecting", "reconnecting") and not core.finished:
                    await self._signal.wait()
        if scope.cancelled_caught:
            await self.close(abort=True)
            raise ConnectionFailed(f"timed out connecting to {core.url}")
        if core.finished:
            await self.close(abort=True)
            raise core.error or ConnectionFailed(f"cannot connect to {core.url}")

    async def _run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._timer_loop)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        except Exception:  # never let a system task crash the run
            self.core.abort(self.now())
        finally:
            self._changed()
            await self._close_stream()
            self._stopped.set()

    async def _read_loop(self) -> None:
        core = self.core
        while not core.finished:
            if core.wants_socket:
                stale, old = core.take_stale_data(), self._stream
                if stale and old is not None:
                    async with self._send_lock:
                        with contextlib.suppress(*_IO_ERRORS), trio.move_on_after(1):
                            await old.send_all(stale)
                await self._close_stream()
                assert core.reconnect_at is not None
                await trio.sleep_until(core.reconnect_at)
                await self._open()
                continue
            stream = self._stream
            if stream is None or core.reading_paused:
                await self._signal.wait()
                continue
            try:
                data = await stream.receive_some(_READ_SIZE)
            except _IO_ERRORS:
                data = b""
            core.receive_data(bytes(data), self.now())
            await self.send()

    async def _timer_loop(self) -> None:
        core = self.core
        while not core.finished:
            await self.send()
            deadline = core.next_deadline()
            signal = self._signal
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await signal.wait()
                continue
            core.handle_timeout(self.now())
            self._changed()


async def _connect(
    kind: Kind, cls: type[_T], url: str, *, api_key: str | None,
    auth: Literal["query", "bearer"], connect_timeout: float, ssl: _ssl.SSLContext | None,
    max_buffered_bytes: int, close_timeout: float, config: dict[str, Any],
) -> _T:
    core = ClientCore(
        kind, url, now=trio.current_time(), api_key=api_key, auth=auth,
        max_buffered_bytes=max_buffered_bytes, **config,
    )
    driver = _Driver(core, ssl, connect_timeout, close_timeout)
    await driver.start()
    return cls(driver)


async def connect_stream(
    url: str, *, api_key: str | None = None, auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20, close_timeout: float = 10.0, **config: Any,
) -> AsyncStream:
    """Connect to ``/ws/tts/stream``; options as in :func:`kugelwire.transports.asyncio.
    connect_stream`."""
    return await _connect(
        "stream", AsyncStream, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )


async def connect_multi(
    url: str, *, api_key: str | None = None, auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20, close_timeout: float = 10.0, **config: Any,
) -> AsyncMulti:
    """Connect to ``/ws/tts/multi``."""
    return await _connect(
        "multi", AsyncMulti, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )


async def connect_tts(
    url: str, *, api_key: str | None = None, auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20, close_timeout: float = 10.0, **config: Any,
) -> AsyncTTS:
    """Connect to ``/ws/tts`` (one-shot requests)."""
    return await _connect(
        "tts", AsyncTTS, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )
