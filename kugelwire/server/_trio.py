"""The trio server runner: the same byte pump, timers and engine driver as the asyncio one.

Per connection a nursery runs a reader (socket -> :class:`ServerConnection`), a writer (an
outbound buffer -> socket), a timer driven by ``next_deadline()`` and one task per synthesis
job; engine steps run in worker threads through a :class:`trio.CapacityLimiter` of
``engine.max_concurrency``. A job only advances while the connection's unsent bytes are below
``write_buffer_limit``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import trio

from ..protocol._server import _ServerSession
from ..protocol._ws import (
    Accepted,
    ConnectionClosed,
    ConnectionState,
    Rejected,
    ServerConnection,
)
from ._common import BUSY_RESPONSE, EngineJob, JobTable, ServerOptions, apply_item, log
from ._metrics import connection_closed, connection_opened, name_peer, request_rejected

__all__ = ["TrioServerHandle"]


class TrioServerHandle:
    """A running trio server (what ``async with trio_serve(...)`` yields)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.host = ""
        self.port = 0
        self._conns: set[_Connection] = set()
        self._draining: int | None = None
        self._limiter = trio.CapacityLimiter(options.slots)
        self._listen_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._done = False
        #: The most unsent bytes any connection held right after a write.
        self.peak_buffered = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def draining(self) -> bool:
        return self._draining is not None

    async def _listen(self, host: str, port: int, *, task_status: Any) -> None:
        assert self._nursery is not None
        with self._listen_scope:
            await trio.serve_tcp(
                self._serve_one, port, host=host, handler_nursery=self._nursery,
                task_status=task_status,
            )

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        await _Connection(self, stream).run()

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful restart, as :meth:`kugelwire.server.ServerHandle.shutdown`."""
        if self._draining is None:
            self._draining = code
            log.info("shutting down (close code %d, %d connections)", code, len(self._conns))
            for conn in list(self._conns):
                conn.shutdown(code)
        limit = self.options.shutdown_timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            while self._conns:
                await self._wait_changed()
        self._listen_scope.cancel()
        for conn in list(self._conns):
            conn.abort()
        with trio.move_on_after(limit):
            while self._conns:
                await self._wait_changed()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class _Connection:
    def __init__(self, server: TrioServerHandle, stream: trio.SocketStream) -> None:
        self._server = server
        self._options = server.options
        self._stream = stream
        self._conn: ServerConnection | None = None
        self._session: _ServerSession | None = None
        self._jobs = JobTable(self._options.engine)
        self._nursery: trio.Nursery | None = None
        self._out = bytearray()
        self._inflight = 0
        self._has_data = trio.Event()
        self._drained = trio.Event()
        self._wake = trio.Event()
        self._closing = False
        self._closed_code: tuple[int | None, str] = (None, "connection lost")

    @property
    def buffered(self) -> int:
        """Unsent outbound bytes (queued plus the write in progress)."""
        return len(self._out) + self._inflight

    async def run(self) -> None:
        server = self._server
        server._conns.add(self)
        server._notify()
        opened_at, peer = trio.current_time(), self._peer_name
        connection_opened(self._options.metrics, peer, opened_at)
        try:
            if len(server._conns) > self._options.max_connections:
                log.warning("refusing a connection: max_connections reached")
                request_rejected(self._options.metrics, peer, 503, "", "busy", opened_at)
                with trio.move_on_after(1):
                    await self._stream.send_all(BUSY_RESPONSE)
                return
            self._conn = ServerConnection(
                self._route,
                api_key=self._options.api_key,
                now=trio.current_time(),
                max_message_size=self._options.max_message_size,
                handshake_timeout=self._options.handshake_timeout,
                close_timeout=self._options.close_timeout,
                auth_failure=self._options.auth_failure,
                http_handler=self._options.http_handler,
                keepalive_interval=self._options.ping_interval,
                ping_timeout=self._options.ping_timeout,
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._timer)
                self._process()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._nursery = None  # closed: _process must not start tasks in it any more
            self._jobs.cancel_all()
            server._conns.discard(self)
            server._notify()
            code, reason = self._closed_code
            connection_closed(self._options.metrics, peer, self._session, code, reason,
                              opened_at, trio.current_time())
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    @property
    def _peer_name(self) -> str:
        try:
            return str(self._stream.socket.getpeername())
        except (AttributeError, OSError):
            return "?"

    def _route(self, path: str) -> _ServerSession | None:
        session = self._options.new_session(path, trio.current_time())
        name_peer(session, self._peer_name)
        if session is not None and self._server._draining is not None:
            session.shutdown(trio.current_time(), 1013)
        return session

    def _process(self) -> None:
        conn, nursery = self._conn, self._nursery
        if conn is None or nursery is None:
            return
        for event in conn.events():
            if isinstance(event, Accepted):
                self._session = cast(_ServerSession, event.session)
            elif isinstance(event, Rejected):
                request_rejected(self._options.metrics, self._peer_name, event.status_code,
                                 event.path, event.reason, trio.current_time())
            elif isinstance(event, ConnectionClosed):
                self._closed_code = (event.code, event.reason)
        if self._session is not None:
            for job in self._jobs.dispatch(self._session):
                nursery.start_soon(self._run_job, job)
        data = conn.data_to_send()
        if data and not self._closing:
            self._out += data
            self._server.peak_buffered = max(self._server.peak_buffered, self.buffered)
            self._has_data.set()
        if conn.state is ConnectionState.CLOSED and not self._closing:
            self._closing = True
            self._jobs.cancel_all()
            self._has_data.set()
            self._set_drained()
            nursery.start_soon(self._reap)
        self._wake.set()

    async def _reap(self) -> None:
        """The writer may be stuck on a peer that stopped reading (half-open): once closed,
        the connection gets ``close_timeout`` seconds to flush before it is dropped."""
        await trio.sleep(self._options.close_timeout)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _set_drained(self) -> None:
        self._drained.set()
        self._drained = trio.Event()

    async def _reader(self) -> None:
        assert self._conn is not None
        while not self._closing:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._conn.receive_data(bytes(data), trio.current_time())
            self._process()
            if not data:
                return

    async def _writer(self) -> None:
        assert self._nursery is not None
        while True:
            await self._has_data.wait()
            self._has_data = trio.Event()
            if self._out:
                data, self._out = bytes(self._out), bytearray()
                self._inflight = len(data)
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._lost()
                self._inflight = 0
                self._set_drained()
            if self._closing and not self._out:
                self._nursery.cancel_scope.cancel()
                return

    def _lost(self) -> None:
        self._out.clear()
        if self._conn is not None and self._conn.state is not ConnectionState.CLOSED:
            self._conn.receive_data(b"", trio.current_time())
        self._process()

    async def _timer(self) -> None:
        assert self._conn is not None
        while not self._closing:
            self._wake = trio.Event()
            deadline = self._conn.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            if deadline is not None and trio.current_time() >= deadline and not self._closing:
                self._conn.handle_timeout(trio.current_time())
                self._process()

    def shutdown(self, code: int) -> None:
        if self._session is not None:
            self._session.shutdown(trio.current_time(), code)
            self._process()

    def abort(self) -> None:
        self._jobs.cancel_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _run_job(self, job: EngineJob) -> None:
        limiter, token, limit = self._server._limiter, job.token, self._options.write_buffer_limit
        try:
            while not token.cancelled:
                while self.buffered > limit and not token.cancelled:
                    await self._drained.wait()  # backpressure: a full socket pauses synthesis
                if token.cancelled:
                    break
                item = await trio.to_thread.run_sync(job.step, limiter=limiter)
                session = self._session
                if token.cancelled or session is None:
                    break
                keep = apply_item(session, job, item, trio.current_time())
                self._process()
                if not keep:
                    break
        except Exception:
            log.exception("engine failed on chunk %s", job.request.ref)
            if self._session is not None and not token.cancelled:
                self._session.fail_chunk(job.request.ref, "Audio generation failed",
                                         trio.current_time())
                self._process()
        finally:
            self._jobs.finished(job)
            if job.needs_close:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(job.close, limiter=limiter)


@asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions) -> AsyncIterator[TrioServerHandle]:
    """Run a trio server for the block; see :func:`kugelwire.server.trio_serve`."""
    handle = TrioServerHandle(options)
    async with trio.open_nursery() as nursery:
        handle._nursery = nursery
        listeners = await nursery.start(handle._listen, host, port)
        sockname = listeners[0].socket.getsockname()
        handle.host, handle.port = str(sockname[0]), int(sockname[1])
        if options.api_key is None:
            log.warning("no API key configured: accepting any key (local development mode)")
        log.info("serving %s (trio, engine %s)", handle.url, type(options.engine).__name__)
        try:
            yield handle
        finally:
            with trio.CancelScope(shield=True):
                await handle.shutdown()
            nursery.cancel_scope.cancel()
