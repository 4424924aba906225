"""Blocking transport (plain sockets + one I/O thread); the asyncio API without ``await``.

    with connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = stream.send_text("Hello world.", flush=True)
        for event in turn: ...

No event loop is created or used, so it works anywhere, including inside a running asyncio
loop's thread pool (``loop.run_in_executor``). One I/O thread per connection reads, runs the
timers and writes; commands update the core under a lock and wake that thread through a socket
pair, so sends go out at once and never wait for audio. A flush, a cancel or a one-shot request
is written by the calling thread itself when nothing else waits to be written (no hand-off on
the way to the server); a caller with more than the high-water mark unwritten waits, and the
I/O thread always gets the lock when it asks (a loop of commands cannot starve its timers).
On the way back, a caller waiting for an event reads the socket itself: what is there already,
and otherwise it waits in ``select`` on the socket (one caller at a time; the I/O thread leaves
the socket to it meanwhile), so a turn's first audio reaches it without a hand-off between
threads; anything else that changes (a cancel or close from another thread, a timer) wakes it.

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
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from ..errors import SendBufferFull
from ..protocol.events import ClientEvent
from ._api import (
    READ_SIZE,
    TTS,
    Connect,
    ConnectOptions,
    Context,
    Events,
    Multi,
    Request,
    Stream,
    Turn,
    connect_error,
    connector,
)
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

_R = TypeVar("_R")
#: Unwritten bytes above which a command waits for the I/O thread to write (see _drain).
_HIGH_WATER = 8 * 2**20
#: The longest a caller waits in select on the socket before it looks at the core again
#: (it is woken for every change; this only bounds a wake-up that could be lost).
_READER_WAIT: float | None = 1.0
#: How soon the I/O thread watches the socket again after a caller stopped waiting on it.
_TAKE_BACK = 0.02
_H = TypeVar("_H")


class _Driver:
    """The socket, the I/O thread and the lock (a Condition) guarding the core."""

    def __init__(self, core: ClientCore, options: ConnectOptions) -> None:
        self.core = core
        lock = threading.RLock()
        self.cond = threading.Condition(lock)
        # Python's locks are not fair: a caller looping on commands could take the lock again
        # and again while the I/O thread waits for it, and timers would fire late. So the I/O
        # thread announces that it wants the lock, and a command steps aside (once) for it.
        self._io_wants = False
        self._aside = threading.Condition(lock)
        self._aside_waiters = 0
        self._draining = 0  # commands waiting in _drain
        #: what the I/O thread's current wait is based on (commands wake it when that changes)
        self._armed: float | None = None
        self._armed_paused = False
        self._ssl, self._connect_timeout = options.ssl, options.connect_timeout
        self._close_timeout = options.close_timeout
        self._sock: socket.socket | None = None
        self._generation = -1
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._write_timeout = options.write_timeout
        self._max_send_buffer = options.max_send_buffer
        self._pending = bytearray()  # written by the I/O thread as the socket takes it
        self._stalled_since: float | None = None  # when a write last could not progress
        self._thread = threading.Thread(target=self._run, name="kugelwire-client", daemon=True)
        #: a caller waits in select on the socket itself (see _wait); the I/O thread leaves the
        #: socket to it meanwhile, and wakes it through its own socket pair
        self._reader: int | None = None  # that caller's thread
        self._reader_r, self._reader_w = socket.socketpair()
        self._reader_r.setblocking(False)
        self._reader_w.setblocking(False)
        self._waiting = 0  # callers waiting on the condition
        # a read by a caller stops after a turn's first audio: the caller has it before the
        # rest is parsed (which it does at its next call, or the I/O thread does; see _run)
        core.yield_after_audio()
        # a flush is written before its bookkeeping (commands run under the lock, as this does)
        core.write_urgent = self._write_direct

    def call(self, fn: Callable[..., _R], *args: Any, urgent: bool = False, **kwargs: Any) -> _R:
        """Run a core command under the lock, then wake the I/O thread to write (``urgent``,
        or a flush: write it from this thread, see :meth:`_write_direct`)."""
        return cast(_R, self._command(None, fn, args, kwargs, urgent))

    def call_handle(
        self, make: Callable[[_R], _H], fn: Callable[..., _R], *args: Any,
        urgent: bool = False, **kwargs: Any,
    ) -> _H:
        """:meth:`call`, turning the result into a handle under the same lock (events the
        I/O thread routes meanwhile must find the buffer claimed)."""
        return cast(_H, self._command(make, fn, args, kwargs, urgent))

    def _command(
        self, make: Callable[[Any], Any] | None, fn: Callable[..., Any],
        args: tuple[Any, ...], kwargs: dict[str, Any], urgent: bool,
    ) -> Any:
        urgent = urgent or bool(kwargs.get("flush"))
        with self.cond:
            self._step_aside()
            result = fn(*args, now=time.monotonic(), **kwargs)
            if make is not None:
                result = make(result)
            wake = self._write_direct() if urgent else True
            if self._reader is not None:  # it may have changed what a waiting caller waits for
                self._notify()
        if wake:
            self.kick()
        self._drain()
        return result

    def _write_direct(self) -> bool:
        """(Lock held, after an urgent command: a flush, a cancel, a request.) Write the
        command's bytes from the caller's thread when nothing else waits to be written (no
        hand-off to the I/O thread on the way to the server: the turn's first audio comes
        sooner); return whether the I/O thread must still look (bytes left over, an earlier
        deadline, a change of reading or connection state). Plain tokens are written by the
        I/O thread instead: the caller only pays for the lock and a wake-up."""
        core = self.core
        sock = self._sock
        if (
            sock is None
            or self._pending
            or self._generation != core.generation
            or core.finished
            or core.wants_socket
            or core.connecting
        ):
            return True
        data = core.data_to_send()
        if data:
            try:
                sent = sock.send(data)
            except OSError:  # would block (TLS too), or an error the I/O thread's write sees
                sent = 0
            if sent < len(data):
                self._pending += data[sent:] if sent else data
                return True
        deadline, armed = core.next_deadline(), self._armed
        if deadline is not None and (armed is None or deadline < armed):
            return True
        return core.reading_paused != self._armed_paused or core.finished

    def _step_aside(self) -> None:
        """(Lock held.) If the I/O thread is waiting for the lock, let it have it first."""
        if self._io_wants and not self._stop:
            self._aside_waiters += 1
            try:
                self._aside.wait(0.01)  # releases the lock; the I/O thread notifies when done
            finally:
                self._aside_waiters -= 1

    @contextlib.contextmanager
    def _io_lock(self) -> Iterator[None]:
        """The I/O thread's hold of the lock (see ``_io_wants``)."""
        self._io_wants = True
        with self.cond:
            self._io_wants = False
            try:
                yield
            finally:
                if self._aside_waiters:
                    self._aside.notify_all()

    def _drain(self) -> None:
        """Like a socket's send buffer: while more than the high-water mark waits to be
        written, the caller waits (releasing the lock), so the I/O thread and its timers run;
        a stuck peer ends the wait through the ping or write timeout."""
        high = min(_HIGH_WATER, self._max_send_buffer // 2)
        core = self.core
        with self.cond:
            while (
                len(self._pending) + core.unsent_size > high
                and not core.finished
                and not self._stop
            ):
                self._draining += 1
                try:
                    self.cond.wait(0.02)  # the I/O thread notifies after each write
                finally:
                    self._draining -= 1

    def kick(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _notify(self) -> None:
        """(Lock held.) Wake the callers waiting for a change: on the condition, and the one
        waiting in select on the socket (unless that is this thread)."""
        self.cond.notify_all()
        reader = self._reader
        if reader is not None and reader != threading.get_ident():
            with contextlib.suppress(OSError):
                self._reader_w.send(b"x")

    def next_event(self, buf: EventBuffer) -> ClientEvent | None:
        with self.cond:
            handed_back = False
            try:
                while not buf.exhausted:
                    event = self.core.pop(buf)
                    if self.core.take_resumed():
                        self.kick()  # the I/O thread may read again
                    if event is not None:
                        return event
                    if not buf.exhausted and not self._read_inline():
                        handed_back = self._wait(handed_back)
            finally:
                if self._reader == threading.get_ident():
                    # No kick: the caller most likely waits again soon (the next event), and a
                    # wake-up now would compete with it; the I/O thread takes the socket back
                    # within _TAKE_BACK (or sooner, for anything else it is woken for).
                    self._reader = None
        return None

    def _wait(self, handed_back: bool) -> bool:
        """(Lock held; released while waiting.) Wait for a change. A caller that may read the
        socket itself (see :meth:`_read_inline`), when no other caller does, waits in select
        on it: the bytes that bring its event are read the moment they come, by this thread,
        with no hand-off from the I/O thread (a thread wake-up costs tens of microseconds).
        The I/O thread leaves the socket alone meanwhile (the first wait kicks it, so it looks
        again) and goes on with timers and writes; whatever else changes wakes this caller
        through its socket pair (:meth:`_notify`). Any other caller waits on the condition,
        and so does this one after it ``handed_back`` the socket (it was readable but not for
        it: EOF, an error, the I/O thread's turn). Returns whether it handed it back."""
        me = threading.get_ident()
        sock = self._sock
        if (
            handed_back
            or (self._reader is not None and self._reader != me)
            or not self._may_read(sock)
            or self.core.held  # the rest of a read first (the I/O thread had the lock)
        ):
            self._leave_socket()
            if self.core.held:
                self.kick()  # the I/O thread parses the rest of the read (see _run)
            self._waiting += 1
            try:
                self.cond.wait()
            finally:
                self._waiting -= 1
            return False
        assert sock is not None
        if self._reader is None:
            self._reader = me
            self.kick()  # the I/O thread stops watching the socket
        self.cond.release()  # held once: next_event is never entered with the lock held
        try:
            ready = select.select([sock, self._reader_r], [], [], _READER_WAIT)[0]
        except (OSError, ValueError):  # closed meanwhile: the core says what happened
            ready = [sock]
        finally:
            self.cond.acquire()
        if self._reader_r in ready:
            with contextlib.suppress(OSError):
                while self._reader_r.recv(4096):
                    pass
        if sock in ready and not self._read_inline():
            self._leave_socket()  # the I/O thread reads it; the caller looks, then waits
            return True
        return False

    def _leave_socket(self) -> None:
        """(Lock held.) If this thread waits on the socket, hand it back to the I/O thread."""
        if self._reader == threading.get_ident():
            self._reader = None
            self.kick()

    def _may_read(self, sock: socket.socket | None) -> bool:
        """(Lock held.) Whether a caller may read the socket itself (see :meth:`_read_inline`)."""
        core = self.core
        return not (
            sock is None
            or self._pending  # bytes wait to be written: the I/O thread writes (and caps) them
            or isinstance(sock, _ssl.SSLSocket)
            or self._generation != core.generation
            or core.finished
            or core.wants_socket
            or core.connecting
            or core.reading_paused
            or self._stop
        )

    def _read_inline(self) -> bool:
        """(Lock held, a caller waiting for an event.) Read what the socket holds already from
        the caller's thread, as the I/O thread would (no hand-off while audio streams in);
        False when there is nothing to read now or the I/O thread must (it asked for the lock,
        bytes wait to be written, TLS, paused, reconnecting, EOF, an error), then the caller
        waits for it."""
        core = self.core
        sock = self._sock
        if self._io_wants or not self._may_read(sock):  # the I/O thread asked for the lock
            return False
        assert sock is not None
        if core.held:  # the rest of this caller's last read
            core.receive_held(time.monotonic())
            self._notify()
            if self._write_direct() or (core.held and self._waiting):
                self.kick()
            return True
        try:
            data = sock.recv(READ_SIZE)
        except OSError:  # would block, or an error the I/O thread's read sees
            return False
        if not data:
            return False  # EOF stays readable: the I/O thread takes it
        try:
            core.receive_data(data, time.monotonic())
        except Exception:  # as on the I/O thread: never leave the connection half-fed
            core.abort(time.monotonic())
        self._notify()
        if core.held:  # a turn's first audio: to this caller first, the rest at its next call
            if self._waiting:
                self.kick()  # other callers wait: the I/O thread parses the rest for them
            return True  # (what it queued is written after the rest, see above)
        if self._write_direct():
            self.kick()
        return True

    def close(self, *, abort: bool = False) -> None:
        core = self.core
        with self.cond:
            if not abort and not core.finished:
                core.close_socket(time.monotonic())
                self.kick()
                self.cond.wait_for(lambda: core.finished, self._close_timeout)
            core.abort(time.monotonic(), "closed")
            self._stop = True
            self._notify()
        self.kick()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._close_timeout)
        self._close_sock()
        for s in (self._wake_r, self._wake_w, self._reader_r, self._reader_w):
            s.close()

    # -- I/O thread ----------------------------------------------------------------------------
    def _close_sock(self) -> None:
        sock, self._sock = self._sock, None
        self._pending.clear()
        self._stalled_since = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _open(self) -> None:
        with self._io_lock():
            (host, port), secure = self.core.address, self.core.secure
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
            if secure:
                ctx = self._ssl if self._ssl is not None else _ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
            sock.setblocking(False)  # writes never block the I/O thread (timers keep firing)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ValueError) as exc:
            with self._io_lock():
                self.core.connect_failed(exc, time.monotonic())
                self._notify()
            return
        with self._io_lock():
            self._sock, self._generation = sock, self.core.generation
            self.core.socket_opened(time.monotonic())

    def _last_write(self, sock: socket.socket | None, data: bytes) -> None:
        """Best-effort final bytes (a close frame) to a socket about to close: at most 1 s."""
        if data and sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                sock.sendall(data)

    def _fail_write(self, message: str) -> None:
        with self._io_lock():
            self.core.fail(time.monotonic(), SendBufferFull(message))
            self._notify()

    def _write_some(self, sock: socket.socket) -> None:
        """Write what the socket takes now; the rest waits in ``_pending`` (under the lock:
        commands write directly too, see :meth:`_write_direct`)."""
        with self._io_lock():
            try:
                sent = sock.send(self._pending) if self._pending else 0
            except (BlockingIOError, _ssl.SSLWantWriteError, _ssl.SSLWantReadError):
                sent = 0
            except OSError:
                sent = -1
            if sent > 0:
                del self._pending[:sent]
                self._stalled_since = None
                if self._draining:
                    self._notify()
        if sent < 0:
            self._feed(b"")

    def _read(self, sock: socket.socket) -> bool:
        """Read the socket and feed the core, both under the lock (a caller waiting for events
        reads too, see :meth:`_read_inline`: the bytes must reach the core in their order)."""
        with self._io_lock():
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                return False
            except OSError:
                data = b""
            self.core.receive_data(data, time.monotonic())
            self._receive_held()
            self._notify()
        return True

    def _receive_held(self) -> None:
        """(Lock held.) Parse the rest of a read that stopped after a turn's first audio."""
        core = self.core
        while core.held and not core.finished:
            core.receive_held(time.monotonic())

    def _feed(self, data: bytes | None) -> None:
        with self._io_lock():
            if data is None:
                self.core.handle_timeout(time.monotonic())
            else:
                self.core.receive_data(data, time.monotonic())
                self._receive_held()
            self._notify()

    def start(self) -> None:
        core = self.core
        self._open()
        if not core.finished:
            self._thread.start()
            with self.cond:
                ready = self.cond.wait_for(
                    lambda: core.finished or not core.connecting, self._connect_timeout
                )
            if not ready:
                self.close(abort=True)
                raise connect_error(core, timed_out=True)
        if core.finished:
            self.close(abort=True)
            raise connect_error(core)

    def _run(self) -> None:
        core = self.core
        pending = self._pending
        try:
            while not self._stop:
                with self._io_lock():  # one look at the core per round
                    if core.finished:
                        break
                    if core.held:  # the rest of a caller's read (it did not come back)
                        self._receive_held()
                        self._notify()
                    reconnect_at = core.reconnect_at if core.wants_socket else None
                    sock = self._sock
                    current = sock is not None and self._generation == core.generation
                    if current and reconnect_at is None:
                        pending += core.data_to_send()
                    paused, deadline = core.reading_paused, core.next_deadline()
                    self._armed, self._armed_paused = deadline, paused
                    given = self._reader is not None  # a caller waits on the socket itself
                if reconnect_at is not None:
                    with self._io_lock():
                        stale = bytes(pending) + core.take_stale_data()
                    self._last_write(self._sock, stale)
                    self._close_sock()
                    time.sleep(max(0.0, reconnect_at - time.monotonic()))
                    self._open()
                    continue
                if len(pending) > self._max_send_buffer:
                    self._fail_write(
                        f"more than {self._max_send_buffer} bytes wait to be written "
                        "(max_send_buffer): the server stopped reading"
                    )
                    continue
                now = time.monotonic()
                if pending and sock is not None:
                    self._write_some(sock)
                    if pending:
                        if self._stalled_since is None:
                            self._stalled_since = now
                        elif now - self._stalled_since >= self._write_timeout:
                            self._fail_write(
                                f"the server took no data for {self._write_timeout:g} s "
                                "(write_timeout)"
                            )
                            continue
                watch: list[Any] = [self._wake_r]
                if not paused and sock is not None and not given:
                    watch.append(sock)
                wants_write = [sock] if pending and sock is not None else []
                timeout = None if deadline is None else max(0.0, deadline - now)
                if given:  # look again soon: the caller may stop waiting without a kick
                    timeout = _TAKE_BACK if timeout is None else min(timeout, _TAKE_BACK)
                if wants_write and self._stalled_since is not None:
                    left = max(0.0, self._stalled_since + self._write_timeout - now)
                    timeout = left if timeout is None else min(timeout, left)
                ssl_ready = isinstance(sock, _ssl.SSLSocket) and not paused and sock.pending()
                if ssl_ready:
                    ready: list[Any] = [sock]
                else:
                    ready, writable, _ = select.select(watch, wants_write, [], timeout)
                    if writable:
                        continue  # write at the top of the next round
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                if sock is not None and sock in ready and not self._read(sock):
                    continue  # nothing to hand on yet (a caller read it, a partial TLS record)
                if deadline is not None and time.monotonic() >= deadline:
                    self._feed(None)  # also while wake-ups keep select busy
        except Exception:  # never leave waiters hanging
            with self._io_lock():
                core.abort(time.monotonic())
        finally:
            with self._io_lock():
                sock = self._sock
                ok = sock is not None and self._generation == core.generation
                failed = isinstance(core.error, SendBufferFull)
                last = b"" if failed or not ok else bytes(pending) + core.data_to_send()
            self._last_write(sock, last)
            self._close_sock()
            with self.cond:
                self._notify()


def _open(kind: Kind, url: str, options: ConnectOptions) -> Any:
    driver = _Driver(options.core(kind, url, time.monotonic()), options)
    driver.start()
    return {"stream": Stream, "multi": Multi, "tts": TTS}[kind](driver)


connect_stream: Connect[Stream] = connector("stream", _open, "blocking")
connect_multi: Connect[Multi] = connector("multi", _open, "blocking")
connect_tts: Connect[TTS] = connector("tts", _open, "blocking")
