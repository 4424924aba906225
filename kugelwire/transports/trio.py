"""trio transport for the three client roles; the same API as :mod:`kugelwire.transports.asyncio`.

    async with await connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = await stream.send_text("Hello world.", flush=True)
        async for event in turn: ...

The connection's reader and timer tasks run as a trio *system task* (so ``connect_*`` can return
a plain object, like the asyncio adapter); they never raise and are cancelled by ``close()`` or
when the run ends. Writes are serialised by a lock and happen at once; ``synthesize`` (a plain
function) hands its bytes to the timer task, which writes them immediately. The driver itself is
shared with the anyio adapter (:mod:`kugelwire.transports._tasks`).

Backpressure policy (as in every adapter): events wait in bounded per-turn / per-request /
per-context buffers; above ``max_buffered_bytes`` of audio the reader stops reading, so TCP flow
control slows the server. Memory stays bounded and audio is never dropped. Only typed exceptions
of :mod:`kugelwire.errors` (and ``LocalProtocolError``) escape.
"""

from __future__ import annotations

import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _api
from ._api import AsyncContext, AsyncMulti, AsyncRequest, AsyncStream, AsyncTTS, AsyncTurn
from ._tasks import READ_SIZE, TaskDriver

__all__ = ["AsyncContext", "AsyncMulti", "AsyncRequest", "AsyncStream", "AsyncTTS", "AsyncTurn",
           "connect_multi", "connect_stream", "connect_tts"]


class _Driver(TaskDriver):
    """The task driver on trio streams; the background task is a system task.

    On a plain TCP connection the reads and writes use a duplicate of the stream's socket
    with trio's I/O waits directly: a read costs one scheduling round (``receive_some`` takes
    two: the wait, then a checkpoint), and a write that the socket takes at once costs none.
    TLS connections use the ``SSLStream``.
    """

    lib = trio
    io_errors = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _ssl.SSLError)
    _raw: tuple[Any, socket.socket] | None = None  # (the stream, its duplicated socket)

    async def connect(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> Any:
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        if ssl is None:
            raw = socket.fromfd(tcp.socket.fileno(), tcp.socket.family, tcp.socket.type)
            raw.setblocking(False)
            self._drop_raw()
            self._raw = (stream, raw)
        else:
            ssl_stream = trio.SSLStream(stream, ssl, server_hostname=host)
            try:
                await ssl_stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = ssl_stream
        return stream

    async def receive(self, stream: Any) -> bytes:
        raw = self._raw
        if raw is None or raw[0] is not stream:
            return bytes(await stream.receive_some(READ_SIZE))
        sock = raw[1]
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue  # woken without data: wait again

    async def send_all(self, stream: Any, data: bytes) -> None:
        raw = self._raw
        if raw is None or raw[0] is not stream:
            await stream.send_all(data)
            return
        sock = raw[1]
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += sock.send(view[sent:])
                except (BlockingIOError, InterruptedError):
                    await trio.lowlevel.wait_writable(sock)

    def send_nowait(self, stream: Any, data: bytes) -> int:
        raw = self._raw
        if raw is None or raw[0] is not stream:
            return 0
        try:
            return raw[1].send(data)
        except OSError:  # full (or failed: send_all meets the error again and reports it)
            return 0

    async def _close_stream(self) -> None:
        self._drop_raw()
        await super()._close_stream()

    def _drop_raw(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            trio.lowlevel.notify_closing(raw[1])  # wakes a wait on it (ClosedResourceError)
            raw[1].close()

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        trio.lowlevel.spawn_system_task(fn)

    def task_group(self) -> Any:
        return trio.open_nursery()


connect_stream, connect_multi, connect_tts = _api.async_connectors(
    _Driver, trio.current_time, "trio"
)
