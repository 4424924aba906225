"""asyncio transport for the three client roles (``/ws/tts/stream``, ``/ws/tts/multi``,
``/ws/tts``).

This module only moves bytes and drives timers; every decision is made by the sans-IO
:class:`~kugelwire.transports._core.ClientCore`::

    async with await connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = await stream.send_text("Hello ")   # never waits for audio
        await stream.send_text("world.")
        await stream.flush()
        async for event in turn:                    # ends with TurnClosed / Interrupted
            ...

Full duplex: a background reader task feeds the core and a timer task fires its deadlines
(keepalive pings, cancel and idle timers); sends are written at once.

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
from typing import Any, Literal, TypeVar

from ..errors import ConnectionFailed, KugelwireError
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


class _Driver:
    """One socket (at a time), a reader task and a timer task for a :class:`ClientCore`."""

    def __init__(
        self,
        core: ClientCore,
        ssl: _ssl.SSLContext | None,
        connect_timeout: float,
        close_timeout: float,
    ) -> None:
        self.core = core
        self._loop = asyncio.get_running_loop()
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._signal = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._generation = -1
        self._tasks: list[asyncio.Task[None]] = []

    # -- AsyncDriver ---------------------------------------------------------------------------
    def now(self) -> float:
        return self._loop.time()

    def kick(self) -> None:
        self._write()
        self._changed()

    async def send(self) -> None:
        self.kick()
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                await writer.drain()  # errors show up on the reader side as EOF

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
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._until(lambda: core.finished), self._close_timeout)
        core.abort(self.now(), "closed")
        self._changed()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_socket()

    # -- internals -----------------------------------------------------------------------------
    def _changed(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    async def _until(self, ready: Any) -> None:
        while not ready():
            await self._signal.wait()

    def _write(self) -> None:
        writer = self._writer
        if writer is None or self._generation != self.core.generation:
            return
        data = self.core.data_to_send()
        if data and not writer.is_closing():
            writer.write(data)

    def _close_socket(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _open(self) -> None:
        host, port = self.core.address
        context = None
        if self.core.secure:
            context = self._ssl if self._ssl is not None else _ssl.create_default_context()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None,
                    limit=_READ_SIZE,
                ),
                self._connect_timeout,
            )
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            self.core.connect_failed(exc, self.now())
            self._changed()
            return
        self._generation = self.core.generation
        self.core.socket_opened(self.now())
        self._write()

    async def start(self) -> None:
        """Open the socket, start the tasks, wait for the upgrade (all within the timeout)."""
        core = self.core
        try:
            await asyncio.wait_for(self._open(), self._connect_timeout)
            if not core.finished:
                self._tasks = [
                    asyncio.ensure_future(self._read_loop()),
                    asyncio.ensure_future(self._timer_loop()),
                ]
                await asyncio.wait_for(
                    self._until(lambda: core.state not in ("connecting", "reconnecting")),
                    self._connect_timeout,
                )
        except asyncio.TimeoutError:
            await self.close(abort=True)
            raise ConnectionFailed(f"timed out connecting to {core.url}") from None
        if core.finished:
            await self.close(abort=True)
            raise core.error or ConnectionFailed(f"cannot connect to {core.url}")

    async def _read_loop(self) -> None:
        core = self.core
        try:
            while not core.finished:
                if core.wants_socket:
                    stale = core.take_stale_data()
                    if stale and self._writer is not None and not self._writer.is_closing():
                        self._writer.write(stale)
                    self._close_socket()
                    assert core.reconnect_at is not None
                    await asyncio.sleep(max(0.0, core.reconnect_at - self.now()))
                    await self._open()
                    continue
                reader = self._reader
                if reader is None or core.reading_paused:
                    await self._signal.wait()
                    continue
                try:
                    data = await reader.read(_READ_SIZE)
                except OSError:
                    data = b""
                core.receive_data(data, self.now())
                self._write()
                self._changed()
        except KugelwireError:
            core.abort(self.now())
        finally:
            self._changed()
            self._close_socket()

    async def _timer_loop(self) -> None:
        core = self.core
        while not core.finished:
            deadline = core.next_deadline()
            signal = self._signal
            delay = None if deadline is None else deadline - self.now()
            if delay is None or delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(signal.wait(), delay)
                    continue
            core.handle_timeout(self.now())
            self._write()
            self._changed()


async def _connect(
    kind: Kind,
    cls: type[_T],
    url: str,
    *,
    api_key: str | None,
    auth: Literal["query", "bearer"],
    connect_timeout: float,
    ssl: _ssl.SSLContext | None,
    max_buffered_bytes: int,
    close_timeout: float,
    config: dict[str, Any],
) -> _T:
    loop = asyncio.get_running_loop()
    core = ClientCore(
        kind, url, now=loop.time(), api_key=api_key, auth=auth,
        max_buffered_bytes=max_buffered_bytes, **config,
    )
    driver = _Driver(core, ssl, connect_timeout, close_timeout)
    await driver.start()
    return cls(driver)


async def connect_stream(
    url: str,
    *,
    api_key: str | None = None,
    auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0,
    ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20,
    close_timeout: float = 10.0,
    **config: Any,
) -> AsyncStream:
    """Connect to ``/ws/tts/stream`` (``url``: the server's base URL or the endpoint's URL).

    ``config``: sticky config fields (``voice_id``, ``sample_rate``...), session options
    (``cancel_timeout``, ``idle_flush_guard``) and core options (``restart_delay``,
    ``max_restarts``, ``ping_interval``, ``ping_timeout``, ``max_buffered_events``...).
    """
    return await _connect(
        "stream", AsyncStream, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )


async def connect_multi(
    url: str,
    *,
    api_key: str | None = None,
    auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0,
    ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20,
    close_timeout: float = 10.0,
    **config: Any,
) -> AsyncMulti:
    """Connect to ``/ws/tts/multi``; see :func:`connect_stream` for the options."""
    return await _connect(
        "multi", AsyncMulti, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )


async def connect_tts(
    url: str,
    *,
    api_key: str | None = None,
    auth: Literal["query", "bearer"] = "query",
    connect_timeout: float = 10.0,
    ssl: _ssl.SSLContext | None = None,
    max_buffered_bytes: int = 4 * 2**20,
    close_timeout: float = 10.0,
    **config: Any,
) -> AsyncTTS:
    """Connect to ``/ws/tts`` (one-shot requests); see :func:`connect_stream`."""
    return await _connect(
        "tts", AsyncTTS, url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
        ssl=ssl, max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
        config=config,
    )
