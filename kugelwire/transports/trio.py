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

import trio

from . import _api
from ._api import AsyncContext, AsyncMulti, AsyncRequest, AsyncStream, AsyncTTS, AsyncTurn
from ._core import ClientCore

__all__ = ["AsyncContext", "AsyncMulti", "AsyncRequest", "AsyncStream", "AsyncTTS", "AsyncTurn",
           "connect_multi", "connect_stream", "connect_tts"]

_READ_SIZE = 65536
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _ssl.SSLError)


class _Driver(_api.SignalDriver):
    """One stream (at a time), a reader task and a timer/writer task for a ClientCore."""

    def __init__(self, core: ClientCore, options: _api.ConnectOptions) -> None:
        super().__init__(core, trio.Event)
        self._options = options
        self._stream: trio.abc.Stream | None = None
        self._generation = -1
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._started = False
        self._wake = trio.Event()  # wakes the timer/writer task
        self._armed = math.inf  # the deadline the timer task sleeps until
        self._kicked = False  # bytes queued by a plain function: the timer task writes them

    def now(self) -> float:
        return trio.current_time()

    def kick(self) -> None:
        self._kicked = True  # the timer task writes
        self.changed()

    async def send(self) -> None:
        await self._flush()
        self.changed()

    def changed(self) -> None:
        """Wake waiters; wake the timer task only for a kick or an earlier deadline."""
        super().changed()
        core = self.core
        deadline = None if core.finished else core.next_deadline()
        if self._kicked or core.finished or (deadline is not None and deadline < self._armed):
            self._wake.set()

    async def close(self, *, abort: bool = False) -> None:
        core = self.core
        if not abort and not core.finished:
            core.close_socket(self.now())
            await self.send()
            with trio.move_on_after(self._options.close_timeout):
                await self.until(lambda: core.finished)
        core.abort(self.now(), "closed")
        self.changed()
        self._scope.cancel()
        if self._started:
            await self._stopped.wait()
        else:
            await self._close_stream()

    # -- internals -----------------------------------------------------------------------------
    async def _flush(self) -> None:
        """Write what the core queued (under the lock: the stream may change meanwhile)."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # no scheduling round when the lock is free (the usual case)
        except trio.WouldBlock:
            await lock.acquire()
        try:
            stream = self._stream
            current = stream is not None and self._generation == self.core.generation
            data = self.core.data_to_send() if current else b""
            if data and stream is not None:
                with contextlib.suppress(*_IO_ERRORS):  # the reader sees it as EOF
                    await stream.send_all(data)
        finally:
            lock.release()

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
            with trio.fail_after(self._options.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                if self.core.secure:
                    ctx = self._options.ssl or _ssl.create_default_context()
                    ssl_stream = trio.SSLStream(stream, ctx, server_hostname=host)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
        except (*_IO_ERRORS, trio.TooSlowError, ValueError) as exc:
            self.core.connect_failed(exc, self.now())
            self.changed()
            return
        self._stream = stream
        self._generation = self.core.generation
        self.core.socket_opened(self.now())
        await self.send()

    async def start(self) -> None:
        core = self.core
        with trio.move_on_after(self._options.connect_timeout) as scope:
            await self._open()
            if not core.finished:
                trio.lowlevel.spawn_system_task(self._run)
                self._started = True
                await self.until(lambda: not core.connecting or core.finished)
        if scope.cancelled_caught or core.finished:
            await self.close(abort=True)
            raise _api.connect_error(core, timed_out=scope.cancelled_caught)

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
            self.changed()
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
            self.changed()  # wake the consumers first, then write replies (pongs, close)
            await self._flush()

    async def _timer_loop(self) -> None:
        core = self.core
        while not core.finished:
            if self._kicked:
                self._kicked = False
                await self._flush()
            deadline = core.next_deadline()
            self._armed = math.inf if deadline is None else deadline
            self._wake = wake = trio.Event()
            with trio.move_on_at(self._armed):
                await wake.wait()
                continue
            self._armed = math.inf
            core.handle_timeout(self.now())
            self._kicked = True  # write what the timeout queued (a ping, a close frame...)
            self.changed()


connect_stream, connect_multi, connect_tts = _api.async_connectors(
    _Driver, trio.current_time, "trio"
)
