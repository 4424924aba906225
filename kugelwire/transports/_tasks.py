"""The task-based async driver, written once for trio and anyio.

trio and anyio share the structured-concurrency vocabulary (``Event``, ``Lock``, ``CancelScope``,
``current_time``, ``sleep_until``), so one driver serves both: a reader, a timer and a writer
task around a :class:`~kugelwire.transports._core.ClientCore`. An adapter subclasses
:class:`TaskDriver` and provides the library module (:attr:`TaskDriver.lib`), how to open a byte
stream, read from it, write to it and start the background task (trio: a system task; anyio: a
task in the connection's task group).

Rules every write follows (so a peer that stops reading cannot hang the application):

* a write that cannot complete within ``write_timeout`` fails the connection;
* once the core is finished (failed, aborted or closed), every pending write is cancelled and
  the reader stops: nothing waits on a socket the core gave up on.
"""

from __future__ import annotations

import contextlib
import math
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import SendBufferFull
from . import _api
from ._core import ClientCore

__all__ = ["TaskDriver"]

READ_SIZE = _api.READ_SIZE
#: Unwritten bytes above which ``send()`` writes (and waits) itself instead of handing over.
HIGH_WATER = 65536
_R = TypeVar("_R")
_H = TypeVar("_H")


class TaskDriver(_api.SignalDriver):
    """One stream (at a time), a reader, a timer and a writer task for a ClientCore."""

    lib: Any  # the ``trio`` or ``anyio`` module
    io_errors: tuple[type[BaseException], ...] = (OSError, _ssl.SSLError)

    def __init__(self, core: ClientCore, options: _api.ConnectOptions) -> None:
        lib = self.lib
        super().__init__(core, lib.Event)
        self._options = options
        self._stream: Any = None
        self._generation = -1
        self._send_lock = lib.Lock()
        self._scope = lib.CancelScope()
        self._writes: set[Any] = set()  # cancel scopes of the writes in progress
        self._stopped = lib.Event()
        self._started = False
        self._wake = lib.Event()  # wakes the timer task
        self._write_wake = lib.Event()  # wakes the writer task
        self._armed = math.inf  # the deadline the timer task sleeps until
        self._kicked = False  # bytes queued without a write: the writer task writes them
        self._pending = bytearray()  # taken from the core for the current stream, unwritten
        core.yield_after_audio()  # a turn's first audio wakes its consumer before the rest
        core.write_urgent = self._write_urgent  # a flush is written before its bookkeeping

    # -- what an adapter provides --------------------------------------------------------------
    async def connect(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> Any:
        raise NotImplementedError

    async def receive(self, stream: Any) -> bytes:
        """Bytes from ``stream``; ``b""`` at EOF."""
        raise NotImplementedError

    async def send_all(self, stream: Any, data: bytes) -> None:
        raise NotImplementedError

    def send_nowait(self, stream: Any, data: bytes) -> int:
        """Write what ``stream`` takes of ``data`` at once, without waiting or yielding; how
        many bytes that was (0: none, or this adapter cannot: :meth:`send_all` writes)."""
        return 0

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start the connection's background task (it never raises)."""
        raise NotImplementedError

    def task_group(self) -> Any:
        """A task group / nursery for the reader and the timer task."""
        return self.lib.create_task_group()

    # -- the driver ----------------------------------------------------------------------------
    def now(self) -> float:
        return float(self.lib.current_time())

    def kick(self) -> None:
        self._kicked = True  # the writer task writes
        self._write_wake.set()
        self.changed()

    async def send(self, *, urgent: bool = False) -> None:
        """Leave what the core queued to the writer task (which frames and writes it) without
        a scheduling round of our own; while a write is in progress, or more than
        :data:`HIGH_WATER` bytes are queued or unwritten (the writer did not get to run: a
        caller that never yields), write here and wait (backpressure). An urgent write (a
        flush) is written here at once."""
        if (
            urgent
            or self._send_lock.locked()
            or len(self._pending) + self.core.unsent_size >= HIGH_WATER
        ):
            if not (urgent and self._write_nowait()):
                await self._flush()
            self.changed()
        else:
            self.kick()

    async def call_handle(
        self, make: Callable[[_R], _H], fn: Callable[..., _R], *args: Any,
        urgent: bool = False, **kwargs: Any,
    ) -> _H:
        """As the shared one; an urgent command that the socket takes at once is written
        before its handle is made (no task ran in between, so nothing was routed: the flush
        reaches the server a few microseconds sooner)."""
        if not (urgent or kwargs.get("flush", False)):
            return await super().call_handle(make, fn, *args, **kwargs)
        result = fn(*args, now=self.now(), **kwargs)
        if self._write_nowait():
            handle = make(result)
            self.changed()
            return handle
        handle = make(result)
        await self._flush()
        self.changed()
        return handle

    def _write_urgent(self) -> None:
        """(Inside a core command: :attr:`ClientCore.write_urgent`.) Write what the core
        queued if nothing else waits to be written and the socket takes it at once; what it
        does not take waits in :attr:`_pending` (the write after the command checks its
        bound and writes it)."""
        core = self.core
        stream = self._stream
        if (
            stream is None
            or self._pending
            or self._send_lock.locked()
            or self._generation != core.generation
            or core.finished
        ):
            return
        data = core.data_to_send()
        if data:
            sent = self.send_nowait(stream, data)
            if sent < len(data):
                self._pending += data[sent:]

    def _write_nowait(self) -> bool:
        """Write what the core queued now if the socket takes all of it at once (no write in
        progress); False leaves the rest to :meth:`_flush`."""
        if self._send_lock.locked():
            return False
        self._take()
        pending = self._pending
        if pending:
            sent = self.send_nowait(self._stream, bytes(pending))
            del pending[:sent]
        return not pending

    def _take(self) -> None:
        """Move what the core queued for the current stream into :attr:`_pending`."""
        core = self.core
        if self._stream is not None and self._generation == core.generation and not core.finished:
            self._pending += core.data_to_send()
            cap = self._options.max_send_buffer
            if len(self._pending) > cap:
                self._pending.clear()
                core.fail(self.now(), SendBufferFull(
                    f"more than {cap} bytes wait to be written (max_send_buffer): "
                    "the server stopped reading"
                ))
                self.changed()

    def changed(self) -> None:
        """Wake waiters; wake the timer task only for an earlier deadline; once the core is
        finished, cancel the writes in progress and stop the tasks."""
        super().changed()
        core = self.core
        if core.finished:
            self._wake.set()
            self._write_wake.set()
            for scope in self._writes:
                scope.cancel()
            self._scope.cancel()
            return
        deadline = core.next_deadline()
        if deadline is not None and deadline < self._armed:
            self._wake.set()

    async def close(self, *, abort: bool = False) -> None:
        core = self.core
        if not abort and not core.finished:
            core.close_socket(self.now())
            await self.send()
            with self.lib.move_on_after(self._options.close_timeout):
                await self.until(lambda: core.finished)
        core.abort(self.now(), "closed")
        self.changed()
        if self._started:
            await self._stopped.wait()
        else:
            await self._close_stream()

    async def start(self) -> None:
        core = self.core
        with self.lib.move_on_after(self._options.connect_timeout) as scope:
            await self._open()
            if not core.finished:
                self.spawn(self._run)
                self._started = True
                await self.until(lambda: not core.connecting or core.finished)
        if scope.cancelled_caught or core.finished:
            await self.close(abort=True)
            raise _api.connect_error(core, timed_out=scope.cancelled_caught)

    # -- internals -----------------------------------------------------------------------------
    async def _flush(self) -> None:
        """Write what the core queued (under the lock: the stream may change meanwhile); the
        writer holding the lock keeps writing until nothing is queued."""
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # no scheduling round when the lock is free (the usual case)
        try:
            while True:
                self._take()
                if not self._pending:
                    break
                data = bytes(self._pending)
                self._pending.clear()
                sent = self.send_nowait(self._stream, data)  # no cancel scope when all goes
                if sent < len(data):
                    await self._write(self._stream, data[sent:])
        finally:
            lock.release()

    async def _write(self, stream: Any, data: bytes) -> None:
        """One bounded write; a peer that does not take it in time fails the connection."""
        core = self.core
        timeout = self._options.write_timeout
        scope = self.lib.CancelScope(deadline=self.lib.current_time() + timeout)
        self._writes.add(scope)
        try:
            with scope, contextlib.suppress(*self.io_errors):  # the reader sees it as EOF
                await self.send_all(stream, data)
        finally:
            self._writes.discard(scope)
        if scope.cancelled_caught and not core.finished:
            core.fail(self.now(), SendBufferFull(
                f"the server took no data for {timeout:g} s (write_timeout)"
            ))
            self.changed()

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending.clear()  # bytes for that stream only
        if stream is not None:
            with self.lib.move_on_after(1) as scope:
                scope.shield = True
                with contextlib.suppress(*self.io_errors):
                    await stream.aclose()

    async def _open(self) -> None:
        host, port = self.core.address
        ctx = None
        if self.core.secure:
            ctx = self._options.ssl or _ssl.create_default_context()
        stream = None
        errors: tuple[type[BaseException], ...] = (*self.io_errors, ValueError)
        with self.lib.move_on_after(self._options.connect_timeout) as scope:
            try:
                stream = await self.connect(host, port, ctx)
            except errors as exc:
                self.core.connect_failed(exc, self.now())
                self.changed()
                return
        if stream is None or scope.cancelled_caught:
            self.core.connect_failed(TimeoutError("timed out"), self.now())
            self.changed()
            return
        self._stream = stream
        self._generation = self.core.generation
        self.core.socket_opened(self.now())
        await self.send()

    async def _run(self) -> None:
        try:
            with self._scope:
                if not self.core.finished:
                    async with self.task_group() as group:
                        group.start_soon(self._timer_loop)
                        group.start_soon(self._write_loop)
                        await self._read_loop()
                        group.cancel_scope.cancel()
        except Exception:  # never let a background task crash the run
            self.core.abort(self.now())
        finally:
            self.changed()
            await self._close_stream()
            self._stopped.set()

    async def _read_loop(self) -> None:
        core = self.core
        while not core.finished:
            if core.wants_socket:
                stale, old = bytes(self._pending) + core.take_stale_data(), self._stream
                if stale and old is not None:
                    async with self._send_lock:
                        with contextlib.suppress(*self.io_errors), self.lib.move_on_after(1):
                            await self.send_all(old, stale)
                await self._close_stream()
                assert core.reconnect_at is not None
                await self.lib.sleep_until(core.reconnect_at)
                await self._open()
                continue
            stream = self._stream
            if stream is None or core.reading_paused:
                await self._signal.wait()
                continue
            try:
                data = await self.receive(stream)
            except self.io_errors:
                data = b""
            core.receive_data(data, self.now())
            if core.held and not core.finished:
                # a turn's first audio: wake its consumer now, follow the core after it
                _api.SignalDriver.changed(self)
            else:
                self.changed()  # wake the consumers first, then write replies (pongs, close)
            while core.held and not core.finished:
                # The read stopped after a turn's first audio: its consumer, woken above, runs
                # before the rest is parsed (two checkpoints: a scheduler may run a batch's
                # tasks in any order, so one could let this task go first).
                await self.lib.sleep(0)
                await self.lib.sleep(0)
                core.receive_held(self.now())
                self.changed()
            if self._pending or core.unsent_size:  # a reply to write (a pong, a close frame)
                await self._flush()

    async def _write_loop(self) -> None:
        """Writes what commands queued without writing themselves (never the timer's job: a
        stuck write must not keep keepalive deadlines from firing)."""
        core = self.core
        while not core.finished:
            if self._kicked:
                self._kicked = False
                await self._flush()
                continue
            self._write_wake = wake = self.lib.Event()
            if not self._kicked:
                await wake.wait()

    async def _timer_loop(self) -> None:
        core = self.core
        while not core.finished:
            deadline = core.next_deadline()
            self._armed = math.inf if deadline is None else deadline
            self._wake = wake = self.lib.Event()
            with self.lib.CancelScope(deadline=self._armed):
                await wake.wait()
                continue
            self._armed = math.inf
            core.handle_timeout(self.now())
            self.kick()  # write what the timeout queued (a ping, a close frame...)
