"""The blocking-socket adapter: no event loop library, one I/O thread over :mod:`selectors`
(non-blocking sockets, a heap of the cores' deadlines) and a thread pool for engine jobs. Worker
threads hand results back through a queue and a wake-up socket; only the I/O thread touches the
core. It decides nothing.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ._adapter import HandleBase, Step, advance, linger_zero
from ._core import EngineJob, ServerOptions, SocketAction

__all__ = ["SyncServerHandle", "serve"]

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_KEEP, _CLOSE = SocketAction.KEEP, SocketAction.CLOSE
_now = time.monotonic


class SyncServerHandle(HandleBase):
    """A running blocking-socket server; every method may be called from any thread."""

    backend = "sync"

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._sel = selectors.DefaultSelector()
        self._pool = ThreadPoolExecutor(options.slots, thread_name_prefix="kugelwire-engine")
        self._inbox: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._heap: list[tuple[float, int, _Conn]] = []
        self._seq = itertools.count()
        self._listener: socket.socket | None = None
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="kugelwire-sync-io", daemon=True)

    def start(self, host: str, port: int, sock: socket.socket | None = None) -> SyncServerHandle:
        """Listen on ``host:port`` (or accept on the listening ``sock``) and start the I/O
        thread."""
        if sock is None:
            sock = socket.create_server((host, port), backlog=self.options.backlog)
        sock.setblocking(False)
        self._listener = sock
        self._bound(sock.getsockname())
        self._sel.register(sock, _READ, self._accept)
        self._sel.register(self._wake_r, _READ, self._woken)
        self._thread.start()
        return self

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the I/O thread (soon)."""
        self._inbox.put(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful restart, as :meth:`kugelwire.server.ServerHandle.shutdown` (blocking)."""
        limit = self.options.shutdown_timeout if timeout is None else timeout
        self.call(lambda: self._drain(code))
        self._until(lambda: not self.core.connections, limit)
        self.call(self._abort_all)
        self._until(lambda: self._idle, limit)

    def stop(self) -> None:
        """Shut down, end the I/O thread and release everything."""
        if self._thread.is_alive():
            self.shutdown()
            self._running = False
            self.call(lambda: None)
            self._thread.join()
        self._pool.shutdown(wait=False)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _until(done: Callable[[], bool], limit: float) -> None:
        deadline = _now() + limit
        while not done() and _now() < deadline:
            time.sleep(0.01)

    # -- the I/O thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            timeout = None
            if self._heap:
                timeout = max(0.0, self._heap[0][0] - _now())
            for key, mask in self._sel.select(timeout):
                key.data(mask)
            now = _now()
            while self._heap and self._heap[0][0] <= now:
                deadline, _, conn = heapq.heappop(self._heap)
                if conn.deadline == deadline and not conn.closed:
                    conn.deadline = None
                    conn.core.handle_timeout(now)
                    conn.flush()

    def _accept(self, mask: int) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, OSError):
                return
            _Conn(self, sock)

    def _woken(self, mask: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                fn = self._inbox.get_nowait()
            except queue.Empty:
                return
            fn()

    def _drain(self, code: int) -> None:
        self.core.shutdown(code, _now())
        self._flush_all()

    def _abort_all(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self.core.abort_all()
        self._flush_all()

    def _flush_all(self) -> None:
        for peer in list(self.core.connections):
            peer.owner.flush()

    def _timer(self, conn: _Conn, deadline: float) -> None:
        self._prune(64)
        heapq.heappush(self._heap, (deadline, next(self._seq), conn))

    def _prune(self, slack: int) -> None:
        """Drop stale deadlines (moved or of closed connections) once they outnumber the live
        ones, so a closed connection is not kept alive by the heap."""
        heap = self._heap
        if len(heap) > 2 * len(self.core.connections) + slack:
            heap[:] = [e for e in heap if e[2].deadline == e[0] and not e[2].closed]
            heapq.heapify(heap)

    def _schedule(self) -> None:
        for job in self.core.take_jobs():
            fut = self._pool.submit(advance, job)
            fut.add_done_callback(functools.partial(self._from_worker, job))

    def _from_worker(self, job: EngineJob, fut: Future[Step]) -> None:
        self.call(functools.partial(self._job_done, job, fut.result()))

    def _job_done(self, job: EngineJob, step: Step) -> None:
        self.core.batch_done(job, *step, _now())
        if not job.peer.lost:
            job.peer.owner.flush()
        self._schedule()


class _Conn:
    __slots__ = ("closed", "core", "deadline", "mask", "out", "server", "sock")

    def __init__(self, server: SyncServerHandle, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.server, self.sock = server, sock
        self.out = bytearray()
        self.closed = False
        self.deadline: float | None = None
        self.mask = _READ
        server._sel.register(sock, _READ, self._ready)
        self.core = server.core.connect(_now())
        self.core.owner = self
        self.flush()

    def _ready(self, mask: int) -> None:
        if mask & _READ:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data is not None:
                self.core.receive_data(data, _now())
        self.flush()

    def flush(self) -> None:
        """Write what the core produced (as much as the socket takes), obey its action."""
        if self.closed:
            return
        core = self.core
        self.out += core.data_to_send()
        if self.out:
            try:
                del self.out[: self.sock.send(self.out)]
            except BlockingIOError:
                pass
            except OSError:
                self.out.clear()
                core.connection_lost(_now())
        core.report_buffered(len(self.out))
        action = core.action
        if action is _KEEP or (action is _CLOSE and self.out):
            mask = (_READ if action is _KEEP and core.reading else 0) | (_WRITE if self.out else 0)
            if mask != self.mask:
                self._register(mask)
            deadline = core.next_deadline()
            if deadline is not None and deadline != self.deadline:
                self.deadline = deadline
                self.server._timer(self, deadline)
        else:
            self._close(action is SocketAction.RESET)
        self.server._schedule()

    def _register(self, mask: int) -> None:
        sel = self.server._sel
        if mask == self.mask:  # e.g. closing a paused connection: it is not registered
            return
        if not self.mask:
            sel.register(self.sock, mask, self._ready)
        elif not mask:
            sel.unregister(self.sock)  # paused: neither readable nor writable interests us
        else:
            sel.modify(self.sock, mask, self._ready)
        self.mask = mask

    def _close(self, reset: bool) -> None:
        self.closed = True
        self._register(0)
        if reset:
            linger_zero(self.sock)
        self.sock.close()
        self.core.connection_lost(_now())
        self.server._prune(0)


@contextlib.contextmanager
def serve(host: str, port: int, options: ServerOptions, *,
          sock: socket.socket | None = None) -> Iterator[SyncServerHandle]:
    """Run a blocking-socket server for the ``with`` block (shut down gracefully on exit).
    With ``sock`` (a bound, listening socket) ``host`` and ``port`` are ignored."""
    handle = SyncServerHandle(options).start(host, port, sock)
    try:
        yield handle
    finally:
        handle.stop()
