"""asyncio transport for the three client roles (``/ws/tts/stream``, ``/ws/tts/multi``,
``/ws/tts``).

This module only moves bytes and drives timers; every decision is made by the sans-IO
:class:`~kugelwire.transports._core.ClientCore` and the API objects live in
:mod:`kugelwire.transports._api`::

    async with await connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = await stream.send_text("Hello ")   # never waits for audio
        await stream.send_text("world.")
        await stream.flush()
        async for event in turn:                    # ends with TurnClosed / Interrupted
            ...

Full duplex: an :class:`asyncio.Protocol` feeds socket bytes to the core as they arrive (no
reader task, no stream buffer), one loop timer fires the core's deadlines (keepalive pings,
cancel and idle timers), and sends are written at once.

Backpressure policy: events wait in per-turn / per-request / per-context buffers until the
application iterates them. When they hold more than ``max_buffered_bytes`` of audio (or
``max_buffered_events`` events) the reader stops reading the socket; the kernel buffers fill and
TCP flow control slows the server down. Memory stays bounded and audio is never dropped; reading
resumes as soon as events are consumed. Events of a turn / request whose handle was dropped (after
its last flush) are discarded. Only the typed exceptions of :mod:`kugelwire.errors` (and
``LocalProtocolError`` for API misuse) escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ..errors import KugelwireError, SendBufferFull
from . import _api
from ._api import AsyncContext, AsyncMulti, AsyncRequest, AsyncStream, AsyncTTS, AsyncTurn
from ._core import ClientCore

__all__ = ["AsyncContext", "AsyncMulti", "AsyncRequest", "AsyncStream", "AsyncTTS", "AsyncTurn",
           "connect_multi", "connect_stream", "connect_tts"]


_COALESCE = 16
_R = TypeVar("_R")
_H = TypeVar("_H")


class _Pipe(asyncio.BufferedProtocol):
    """One socket's callbacks, handed to the driver (late ones of an old socket are ignored).

    Reads go into a buffer of ``READ_SIZE`` bytes (as in the other adapters): the most that
    can arrive past the buffering bound before reading pauses is one such read (a plain
    ``Protocol`` gets whatever the transport reads at once, up to 256 KiB)."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        self._buffer = memoryview(bytearray(_api.READ_SIZE))
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.eof = False
        #: what arrived before the driver adopted this socket (a reset right after the
        #: connect can beat ``create_connection``'s return); replayed on adoption
        self.early: list[bytes] | None = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.driver.received(self, bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool:
        self.driver.received(self, b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        self.driver.received(self, b"")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class _Signal:
    """A one-shot ``asyncio.Event`` for one loop (the driver's signal: set once, then
    replaced): each waiter awaits a future of its own, so a cancelled waiter cancels only that
    one. Cheaper than ``asyncio.Event``, whose ``wait`` finds its loop under a lock."""

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def wait(self) -> asyncio.Future[None]:
        waiter = self._loop.create_future()
        if self._set:
            waiter.set_result(None)
        else:
            self._waiters.append(waiter)
        return waiter


class _Driver(_api.SignalDriver):
    """One socket (at a time) and one loop timer for a :class:`ClientCore`."""

    def __init__(self, core: ClientCore, options: _api.ConnectOptions) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(core, lambda: _Signal(loop))
        self._loop = loop
        self._options = options
        self._pipe: _Pipe | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._generation = -1
        self._reconnect: asyncio.Task[None] | None = None
        self._deferred = 0  # commands whose bytes wait for the coalesced write
        core.yield_after_audio()  # a turn's first audio wakes its consumer before the rest
        core.write_urgent = self._write_urgent  # a flush is written before its bookkeeping

    def now(self) -> float:
        return self._loop.time()

    def kick(self) -> None:
        """Write what the core queued at the next loop iteration: consecutive commands share
        one write (a caller that never yields gets a write every :data:`_COALESCE` commands)."""
        self._deferred += 1
        if self._deferred > _COALESCE:
            self._write_now()
        elif self._deferred == 1:
            self._loop.call_soon(self._write_now)
        self.changed()

    def _write_now(self) -> None:
        if self._deferred:
            self._deferred = 0
            self._write()

    async def call_handle(
        self, make: Callable[[_R], _H], fn: Callable[..., _R], *args: Any,
        urgent: bool = False, **kwargs: Any,
    ) -> _H:
        """As the shared one, but an urgent command's bytes are written before its handle is
        made: here the write never yields to the loop, so nothing can be routed in between
        (the flush reaches the server a few microseconds sooner)."""
        if not (urgent or kwargs.get("flush", False)):
            return await super().call_handle(make, fn, *args, **kwargs)
        result = fn(*args, now=self.now(), **kwargs)
        self._deferred += 1
        self._write_now()
        handle = make(result)
        self.changed()
        await self._writable()
        return handle

    async def send(self, *, urgent: bool = False) -> None:
        if urgent:  # write now (with whatever earlier commands left for the coalesced write)
            self._deferred += 1
            self._write_now()
            self.changed()
        else:
            self.kick()
        await self._writable()

    async def _writable(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        pipe = self._pipe
        if pipe is not None and not pipe.writable.is_set():
            # errors show up as EOF (connection_lost); a peer that takes nothing for
            # write_timeout fails the connection (which aborts the socket and wakes us)
            timeout = self._options.write_timeout
            try:
                await asyncio.wait_for(pipe.writable.wait(), timeout)
            except asyncio.TimeoutError:
                if pipe is self._pipe and not self.core.finished:
                    self.core.fail(self.now(), SendBufferFull(
                        f"the server took no data for {timeout:g} s (write_timeout)"
                    ))
                    self.changed()

    async def close(self, *, abort: bool = False) -> None:
        core = self.core
        if not abort and not core.finished:
            core.close_socket(self.now())
            await self.send()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.until(lambda: core.finished), self._options.close_timeout
                )
        core.abort(self.now(), "closed")
        self.changed()
        task, self._reconnect = self._reconnect, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_socket()

    def changed(self) -> None:
        """Wake waiters, then follow the core: pause/resume reading, re-arm the timer."""
        super().changed()
        core = self.core
        pipe = self._pipe
        if core.finished:
            self._close_socket()
        elif core.wants_socket:
            if self._reconnect is None:
                self._reconnect = self._loop.create_task(self._reopen())
        elif pipe is not None and pipe.transport is not None:
            paused = core.reading_paused
            if paused != self._paused:
                self._paused = paused
                if paused:
                    pipe.transport.pause_reading()
                else:
                    pipe.transport.resume_reading()
        self._rearm()

    # -- internals -----------------------------------------------------------------------------
    def received(self, pipe: _Pipe, data: bytes) -> None:
        """Bytes (``b""``: EOF or a lost connection) from ``pipe``'s socket."""
        if pipe.early is not None:
            pipe.early.append(data)
            return
        if pipe is not self._pipe or pipe.eof:
            return
        pipe.eof = not data
        core = self.core
        try:
            core.receive_data(data, self._loop.time())
        except KugelwireError:
            core.abort(self._loop.time())
        if core.held:  # a first audio: wake its consumer now; writes, reading and the timer
            _api.SignalDriver.changed(self)  # follow the core after it, with the held frames
            self._loop.call_soon(self._receive_held, pipe)
            return
        if core.unsent_size:  # a reply to write (a pong, a close frame)
            self._write()
        self.changed()

    def _receive_held(self, pipe: _Pipe) -> None:
        core = self.core
        if pipe is not self._pipe or not core.held:  # a later read went on with them
            self._write()
            self.changed()
            return
        try:
            core.receive_held(self._loop.time())
        except KugelwireError:
            core.abort(self._loop.time())
        self._write()
        self.changed()
        if core.held:
            self._loop.call_soon(self._receive_held, pipe)

    def _rearm(self) -> None:
        """Keep one loop timer at the core's next deadline (a later deadline lets it fire early
        and re-arm, so incoming traffic does not re-create the timer for every read)."""
        core = self.core
        deadline = None if core.finished else core.next_deadline()
        timer = self._timer
        if timer is not None:
            if deadline is not None and deadline >= self._armed:
                return
            timer.cancel()
            self._timer = None
        if deadline is not None:
            self._armed = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        core = self.core
        deadline = core.next_deadline()
        now = self._loop.time()
        if deadline is not None and now >= deadline:
            try:
                core.handle_timeout(now)
            except KugelwireError:
                core.abort(now)
            self._write()
            self.changed()
        else:
            self._rearm()

    def _write_urgent(self) -> None:
        """(Inside a core command: :attr:`ClientCore.write_urgent`.) Write what the core
        queued, with whatever earlier commands left for the coalesced write; the write after
        the command checks the send buffer's bound."""
        pipe = self._pipe
        if pipe is None or pipe.transport is None or self._generation != self.core.generation:
            return
        transport = pipe.transport
        if not transport.is_closing():
            data = self.core.data_to_send()
            if data:
                transport.write(data)

    def _write(self) -> None:
        pipe = self._pipe
        if pipe is None or pipe.transport is None or self._generation != self.core.generation:
            return
        data = self.core.data_to_send()
        transport = pipe.transport
        if transport.is_closing():
            return
        if data:
            transport.write(data)
        cap = self._options.max_send_buffer
        if transport.get_write_buffer_size() > cap and not self.core.finished:
            self.core.fail(self.now(), SendBufferFull(
                f"more than {cap} bytes wait to be written (max_send_buffer): "
                "the server stopped reading"
            ))
            self.changed()

    def _close_socket(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.transport is not None:
            if self.core.error is None:
                pipe.transport.close()  # clean end: let the last bytes (close frame) go out
            else:
                pipe.transport.abort()  # a failed core: never wait on a peer that may not read
            pipe.writable.set()
        if self.core.finished and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _open(self) -> None:
        host, port = self.core.address
        context = None
        if self.core.secure:
            context = self._options.ssl or _ssl.create_default_context()
        pipe = _Pipe(self)
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: pipe, host, port, ssl=context,
                    server_hostname=host if context else None,
                ),
                self._options.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            self.core.connect_failed(exc, self.now())
            self.changed()
            return
        self._pipe, self._paused = pipe, False
        self._generation = self.core.generation
        self.core.socket_opened(self.now())
        self.kick()
        early, pipe.early = pipe.early or [], None
        for data in early:
            self.received(pipe, data)

    async def _reopen(self) -> None:
        """Reconnect (1012/1013): last bytes to the old socket, wait, open a new one."""
        core = self.core
        stale, pipe = core.take_stale_data(), self._pipe
        if stale and pipe is not None and pipe.transport is not None:
            pipe.transport.write(stale)
        self._close_socket()
        assert core.reconnect_at is not None
        await asyncio.sleep(max(0.0, core.reconnect_at - self.now()))
        await self._open()
        self._reconnect = None
        self.changed()  # another restart may be due already

    async def start(self) -> None:
        """Open the socket and wait for the upgrade (all within the timeout)."""
        core, timeout = self.core, self._options.connect_timeout
        try:
            await asyncio.wait_for(self._open(), timeout)
            if not core.finished:
                await asyncio.wait_for(self.until(lambda: not core.connecting), timeout)
        except asyncio.TimeoutError:
            await self.close(abort=True)
            raise _api.connect_error(core, timed_out=True) from None
        if core.finished:
            await self.close(abort=True)
            raise _api.connect_error(core)


connect_stream, connect_multi, connect_tts = _api.async_connectors(
    _Driver, lambda: asyncio.get_running_loop().time(), "asyncio"
)
