"""Blocking transport (plain sockets + one I/O thread); the asyncio API without ``await``.

    with connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = stream.send_text("Hello world.", flush=True)
        for event in turn: ...

No event loop is created or used, so it works anywhere, including inside a running asyncio
loop's thread pool (``loop.run_in_executor``). One I/O thread per connection does all socket
I/O (reads, writes, TLS, timers); commands only update the core under a lock and wake that
thread through a socket pair, so sends go out at once and never wait for audio.

Backpressure policy (as in every adapter): events wait in bounded per-turn / per-request /
per-context buffers; above ``max_buffered_bytes`` of audio the I/O thread stops reading, so TCP
flow control slows the server. Memory stays bounded and audio is never dropped. Only typed
exceptions of :mod:`kugelwire.errors` (and ``LocalProtocolError``) escape.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl as _ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

from ..errors import ConnectionFailed
from ..protocol._events import ClientEvent, ContextClosed, Interrupted, TurnFinal
from ._core import ClientCore, EventBuffer, Kind

__all__ = [
    "TTS",
    "Context",
    "Events",
    "Multi",
    "Request",
    "Stream",
    "Turn",
    "connect_multi",
    "connect_stream",
    "connect_tts",
]

_READ_SIZE = 65536
_R = TypeVar("_R")


class _Driver:
    """The socket, the I/O thread and the lock (a Condition) guarding the core."""

    def __init__(self, core: ClientCore, ssl: _ssl.SSLContext | None, connect_timeout: float,
                 close_timeout: float) -> None:
        self.core = core
        self.cond = threading.Condition(threading.RLock())
        self._ssl, self._connect_timeout, self._close_timeout = ssl, connect_timeout, close_timeout
        self._sock: socket.socket | None = None
        self._generation = -1
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kugelwire-client", daemon=True)

    def call(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """Run a core command under the lock, then wake the I/O thread to write."""
        with self.cond:
            result = fn(*args, now=time.monotonic(), **kwargs)
        self.kick()
        return result

    def kick(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def next_event(self, buf: EventBuffer) -> ClientEvent | None:
        with self.cond:
            while not buf.exhausted:
                paused = self.core.reading_paused
                event = self.core.pop(buf)
                if event is not None:
                    if paused:
                        self.kick()
                    return event
                if buf.exhausted:
                    break
                self.cond.wait()
        return None

    def close(self, *, abort: bool = False) -> None:
        core = self.core
        with self.cond:
            if not abort and not core.finished:
                core.close_socket(time.monotonic())
                self.kick()
                self.cond.wait_for(lambda: core.finished, self._close_timeout)
            core.abort(time.monotonic(), "closed")
            self._stop = True
            self.cond.notify_all()
        self.kick()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._close_timeout)
        self._close_sock()
        for s in (self._wake_r, self._wake_w):
            s.close()

    # -- I/O thread ----------------------------------------------------------------------------
    def _close_sock(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _open(self) -> None:
        with self.cond:
            (host, port), secure = self.core.address, self.core.secure
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
            if secure:
                ctx = self._ssl if self._ssl is not None else _ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ValueError) as exc:
            with self.cond:
                self.core.connect_failed(exc, time.monotonic())
                self.cond.notify_all()
            return
        with self.cond:
            self._sock, self._generation = sock, self.core.generation
            self.core.socket_opened(time.monotonic())

    def _write(self) -> None:
        with self.cond:
            sock = self._sock
            ok = sock is not None and self._generation == self.core.generation
            data = self.core.data_to_send() if ok else b""
        if data and sock is not None:
            try:
                sock.sendall(data)
            except OSError:
                self._feed(b"")

    def _feed(self, data: bytes | None) -> None:
        with self.cond:
            if data is None:
                self.core.handle_timeout(time.monotonic())
            else:
                self.core.receive_data(data, time.monotonic())
            self.cond.notify_all()

    def start(self) -> None:
        core = self.core
        self._open()
        if not core.finished:
            self._thread.start()
            with self.cond:
                ready = self.cond.wait_for(
                    lambda: core.finished or core.state not in ("connecting", "reconnecting"),
                    self._connect_timeout,
                )
            if not ready:
                self.close(abort=True)
                raise ConnectionFailed(f"timed out connecting to {core.url}")
        if core.finished:
            self.close(abort=True)
            raise core.error or ConnectionFailed(f"cannot connect to {core.url}")

    def _run(self) -> None:
        core = self.core
        try:
            while not self._stop:
                with self.cond:
                    if core.finished:
                        break
                    reconnect_at = core.reconnect_at if core.wants_socket else None
                if reconnect_at is not None:
                    with self.cond:
                        stale = core.take_stale_data()
                    if stale and self._sock is not None:
                        with contextlib.suppress(OSError):
                            self._sock.sendall(stale)
                    self._close_sock()
                    time.sleep(max(0.0, reconnect_at - time.monotonic()))
                    self._open()
                    continue
                self._write()
                with self.cond:
                    paused, deadline = core.reading_paused, core.next_deadline()
                sock = self._sock
                watch: list[Any] = [self._wake_r]
                if not paused and sock is not None:
                    watch.append(sock)
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                pending = isinstance(sock, _ssl.SSLSocket) and not paused and sock.pending()
                ready = [sock] if pending else select.select(watch, [], [], timeout)[0]
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                if sock is not None and sock in ready:
                    try:
                        data = sock.recv(_READ_SIZE)
                    except OSError:
                        data = b""
                    self._feed(data)
                elif not ready:
                    self._feed(None)
        except Exception:  # never leave waiters hanging
            with self.cond:
                core.abort(time.monotonic())
        finally:
            self._write()
            self._close_sock()
            with self.cond:
                self.cond.notify_all()


class Events:
    """Iterator over the events of one turn / request / context, up to its terminal."""

    def __init__(self, driver: _Driver, buf: EventBuffer) -> None:
        self._driver, self._buf = driver, buf
        weakref.finalize(self, driver.core.handle_dropped, buf)

    @property
    def number(self) -> int | None:
        return self._buf.number

    @property
    def done(self) -> bool:
        return self._buf.exhausted

    def __iter__(self) -> Iterator[ClientEvent]:
        return self

    def __next__(self) -> ClientEvent:
        event = self._driver.next_event(self._buf)
        if event is None:
            raise StopIteration
        return event

    def collect(self) -> list[ClientEvent]:
        return list(self)


class Turn(Events):
    """One turn of ``/ws/tts/stream`` (ends with TurnClosed / Interrupted)."""


class Request(Events):
    """One ``/ws/tts`` request (ends with RequestFinal / Interrupted)."""


class Context(Events):
    """One ``/ws/tts/multi`` context (ends with ContextClosed)."""

    @property
    def context_id(self) -> str:
        assert self._buf.context_id is not None
        return self._buf.context_id

    def send_text(self, text: str, *, flush: bool = False) -> None:
        core = self._driver.core
        self._driver.call(core.multi_send_text, self._buf, text, flush=flush)

    def flush(self) -> None:
        self._driver.call(self._driver.core.multi_flush, self._buf)

    def cancel(self) -> None:
        self._driver.call(self._driver.core.multi_cancel, self._buf)

    def close(self, *, immediate: bool = False) -> None:
        self._driver.call(self._driver.core.multi_close, self._buf, immediate=immediate)

    def until_final(self) -> Iterator[ClientEvent]:
        """Events up to and including the next TurnFinal / Interrupted / ContextClosed."""
        for event in self:
            yield event
            if isinstance(event, TurnFinal | Interrupted | ContextClosed):
                return


class _Client:
    def __init__(self, driver: _Driver) -> None:
        self._driver, self._core = driver, driver.core

    @property
    def settings(self) -> dict[str, Any] | None:
        return self._core.settings

    @property
    def log(self) -> Any:
        return self._core.log

    @property
    def closed(self) -> bool:
        return self._core.finished

    @property
    def restarts(self) -> int:
        return self._core.restarts

    def update_settings(self, **settings: Any) -> None:
        self._driver.call(self._core.update_settings, **settings)

    def close(self) -> None:
        self._driver.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._driver.close(abort=exc_type is not None)


_C = TypeVar("_C", bound=_Client)


class Stream(_Client):
    """``/ws/tts/stream``: text in, turns of audio out."""

    def __init__(self, driver: _Driver) -> None:
        super().__init__(driver)
        self._handles: weakref.WeakValueDictionary[EventBuffer, Turn] = (
            weakref.WeakValueDictionary()
        )

    def _handle(self, buf: EventBuffer) -> Turn:
        with self._driver.cond:
            turn = self._handles.get(buf)
            if turn is None:
                self._core.reclaim(buf)
                turn = self._handles[buf] = Turn(self._driver, buf)
        return turn

    def send_text(self, text: str, *, flush: bool = False) -> Turn | None:
        buf = self._driver.call(self._core.stream_send_text, text, flush=flush)
        return None if buf is None else self._handle(buf)

    def flush(self) -> Turn:
        return self._handle(self._driver.call(self._core.stream_flush))

    def cancel(self) -> None:
        self._driver.call(self._core.stream_cancel)


class Multi(_Client):
    """``/ws/tts/multi``: up to 20 contexts, one event stream each."""

    def create_context(self, context_id: str, **options: Any) -> Context:
        buf = self._driver.call(self._core.multi_create, context_id, **options)
        return Context(self._driver, buf)

    def cancel(self) -> None:
        self._driver.call(self._core.multi_cancel, None)


class TTS(_Client):
    """``/ws/tts``: one-shot requests queued in order on one socket."""

    def synthesize(self, text: str, **params: Any) -> Request:
        return Request(self._driver, self._driver.call(self._core.tts_request, text, **params))

    def cancel(self) -> None:
        self._driver.call(self._core.tts_cancel)


def _connect(kind: Kind, url: str, *, api_key: str | None, auth: Literal["query", "bearer"],
             connect_timeout: float, ssl: _ssl.SSLContext | None, max_buffered_bytes: int,
             close_timeout: float, config: dict[str, Any]) -> _Driver:
    core = ClientCore(kind, url, now=time.monotonic(), api_key=api_key, auth=auth,
                      max_buffered_bytes=max_buffered_bytes, **config)
    driver = _Driver(core, ssl, connect_timeout, close_timeout)
    driver.start()
    return driver


def connect_stream(url: str, *, api_key: str | None = None,
                   auth: Literal["query", "bearer"] = "query", connect_timeout: float = 10.0,
                   ssl: _ssl.SSLContext | None = None, max_buffered_bytes: int = 4 * 2**20,
                   close_timeout: float = 10.0, **config: Any) -> Stream:
    """Connect to ``/ws/tts/stream`` (blocking); options as in the asyncio adapter."""
    return Stream(_connect("stream", url, api_key=api_key, auth=auth,
                           connect_timeout=connect_timeout, ssl=ssl,
                           max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
                           config=config))


def connect_multi(url: str, *, api_key: str | None = None,
                  auth: Literal["query", "bearer"] = "query", connect_timeout: float = 10.0,
                  ssl: _ssl.SSLContext | None = None, max_buffered_bytes: int = 4 * 2**20,
                  close_timeout: float = 10.0, **config: Any) -> Multi:
    """Connect to ``/ws/tts/multi`` (blocking)."""
    return Multi(_connect("multi", url, api_key=api_key, auth=auth,
                          connect_timeout=connect_timeout, ssl=ssl,
                          max_buffered_bytes=max_buffered_bytes, close_timeout=close_timeout,
                          config=config))


def connect_tts(url: str, *, api_key: str | None = None,
                auth: Literal["query", "bearer"] = "query", connect_timeout: float = 10.0,
                ssl: _ssl.SSLContext | None = None, max_buffered_bytes: int = 4 * 2**20,
                close_timeout: float = 10.0, **config: Any) -> TTS:
    """Connect to ``/ws/tts`` (blocking)."""
    return TTS(_connect("tts", url, api_key=api_key, auth=auth, connect_timeout=connect_timeout,
                        ssl=ssl, max_buffered_bytes=max_buffered_bytes,
                        close_timeout=close_timeout, config=config))
