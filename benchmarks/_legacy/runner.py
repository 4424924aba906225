"""The asyncio server runner: TCP listener, per-connection byte pump, timers, engine driver.

Per connection an :class:`asyncio.Protocol` feeds socket bytes into a
:class:`~kugelwire.protocol.ws.ServerConnection`, writes what it produces, arms one loop timer
at ``next_deadline()`` and runs the session's synthesis jobs in worker threads (at most
``engine.max_concurrency`` engine calls at once server-wide). A job advances its generator only
while the connection's unsent bytes are below ``write_buffer_limit``: a slow reader pauses its
own synthesis instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from benchmarks._legacy.common import (
    BUSY_RESPONSE,
    EngineJob,
    JobTable,
    ServerOptions,
    apply_item,
    log,
)
from kugelwire.protocol.sessions import ServerSession as _ServerSession
from kugelwire.protocol.ws import (
    Accepted,
    ConnectionClosed,
    ConnectionState,
    Rejected,
    ServerConnection,
)

__all__ = ["ServerHandle"]


class ServerHandle:
    """A running asyncio server (what ``async with serve(...)`` yields)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.host = ""
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._draining: int | None = None
        self._slots = asyncio.Semaphore(options.slots)
        self._pool = ThreadPoolExecutor(options.slots, thread_name_prefix="kugelwire-engine")
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: The most unsent bytes any connection held right after a write.
        self.peak_buffered = 0

    @property
    def url(self) -> str:
        """``ws://host:port`` (append an endpoint path such as ``/ws/tts/stream``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self._conns)

    @property
    def draining(self) -> bool:
        return self._draining is not None

    def stats(self) -> dict[str, int]:
        """Live counters (call on the server's loop): open TCP ``connections``, accepted
        WebSocket ``sessions`` among them, engine ``jobs`` in flight (active syntheses) and
        engine ``tasks`` still running. All are 0 on an idle server."""
        return {
            "connections": len(self._conns),
            "sessions": sum(1 for c in self._conns if c._session is not None),
            "jobs": sum(len(c._jobs) for c in self._conns),
            "tasks": len(self._tasks),
        }

    async def _start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        if self.options.api_key is None:
            log.warning("no API key configured: accepting any key (local development mode)")
        log.info("serving %s (engine %s)", self.url, type(self.options.engine).__name__)

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful restart: idle sockets close with ``code`` now, busy ones after their turn;
        connections arriving meanwhile are accepted and closed with 1013; then the listener
        closes. Connections still open after ``timeout`` seconds are aborted."""
        if self._draining is None:
            self._draining = code
            log.info("shutting down (close code %d, %d connections)", code, len(self._conns))
            for conn in list(self._conns):
                conn.shutdown(code)
        limit = self.options.shutdown_timeout if timeout is None else timeout
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit)
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=limit)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._pool.shutdown(wait=False)

    def _spawn(self, job: EngineJob, conn: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(conn.run_job(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _added(self, conn: _Connection) -> None:
        self._conns.add(conn)
        self._idle.clear()

    def _removed(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if not self._conns:
            self._idle.set()


class _Connection(asyncio.Protocol):
    def __init__(self, server: ServerHandle) -> None:
        self._server = server
        self._options = server.options
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._session: _ServerSession | None = None
        self._jobs = JobTable(self._options.engine)
        self._timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._peer = "?"

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer = str(transport.get_extra_info("peername"))
        self._server._added(self)
        if len(self._server._conns) > self._options.max_connections:
            log.warning("refusing %s: max_connections reached", self._peer)
            self._transport.write(BUSY_RESPONSE)
            self._transport.close()
            return
        limit = self._options.write_buffer_limit
        self._transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self._conn = ServerConnection(
            self._route,
            api_key=self._options.api_key,
            now=self._loop.time(),
            max_message_size=self._options.max_message_size,
            handshake_timeout=self._options.handshake_timeout,
            close_timeout=self._options.close_timeout,
            auth_failure=self._options.auth_failure,
            http_handler=self._options.http_handler,
            keepalive_interval=self._options.ping_interval,
            ping_timeout=self._options.ping_timeout,
        )
        self._process()

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn.receive_data(data, self._loop.time())
            self._process()

    def eof_received(self) -> bool | None:
        if self._conn is not None:
            self._conn.receive_data(b"", self._loop.time())
            self._process()
        return None  # let the transport close once its buffer is written

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None and self._conn.state is not ConnectionState.CLOSED:
            self._conn.receive_data(b"", self._loop.time())
            self._process()
        self._jobs.cancel_all()
        self._writable.set()  # wake paused jobs so they see their cancel token
        if self._timer is not None:
            self._timer.cancel()
        self._server._removed(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- the byte pump ---------------------------------------------------------------------
    def _route(self, path: str) -> _ServerSession | None:
        session = self._options.new_session(path)
        if session is not None and self._server._draining is not None:
            session.shutdown(self._loop.time(), 1013)  # a draining replica: accept, close 1013
        return session

    def _process(self) -> None:
        """Move everything the connection and its session produced: events, jobs, bytes."""
        conn, transport = self._conn, self._transport
        if conn is None or transport is None:
            return
        for event in conn.events():
            if isinstance(event, Accepted):
                self._session = cast(_ServerSession, event.session)
                log.debug("%s: accepted %s", self._peer, event.path)
            elif isinstance(event, Rejected):
                log.info("%s: %s rejected (%d %s)", self._peer, event.path, event.status_code,
                         event.reason)
            elif isinstance(event, ConnectionClosed):
                log.debug("%s: closed (code %s, %s)", self._peer, event.code, event.reason)
        if self._session is not None:
            for job in self._jobs.dispatch(self._session):
                self._server._spawn(job, self)
        data = conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
            size = transport.get_write_buffer_size()
            self._server.peak_buffered = max(self._server.peak_buffered, size)
            if size > 4 * self._options.write_buffer_limit:
                transport.pause_reading()  # a peer flooding pings while not reading
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn.state is ConnectionState.CLOSED:
            self._jobs.cancel_all()
            self._writable.set()
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the buffer to drain: a peer that stopped reading (half-open)
                # would hold the socket forever, so it gets close_timeout seconds at most.
                self._loop.call_later(self._options.close_timeout, transport.abort)
            return
        deadline = conn.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._conn is not None:
            self._conn.handle_timeout(self._loop.time())
            self._process()

    def shutdown(self, code: int) -> None:
        if self._session is not None and self._conn is not None:
            self._session.shutdown(self._loop.time(), code)
            self._process()

    def abort(self) -> None:
        self._jobs.cancel_all()
        self._writable.set()
        if self._transport is not None:
            self._transport.abort()

    # -- the engine driver -------------------------------------------------------------------
    async def run_job(self, job: EngineJob) -> None:
        """Advance one job's generator in worker threads until done, cancelled or dropped."""
        server, loop, token = self._server, self._loop, job.token
        try:
            while not token.cancelled:
                await self._writable.wait()  # backpressure: a full socket pauses synthesis
                if token.cancelled:
                    break
                async with server._slots:
                    item = await loop.run_in_executor(server._pool, job.step)
                session = self._session
                if token.cancelled or session is None:
                    break
                keep = apply_item(session, job, item, loop.time())
                self._process()
                if not keep:
                    break
        except Exception:
            log.exception("%s: engine failed on chunk %s", self._peer, job.request.ref)
            if self._session is not None and not token.cancelled:
                self._session.fail_chunk(job.request.ref, "Audio generation failed", loop.time())
                self._process()
        finally:
            self._jobs.finished(job)
            if job.needs_close:
                async with server._slots:
                    await loop.run_in_executor(server._pool, job.close)


@contextlib.asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions) -> AsyncIterator[ServerHandle]:
    """Run an asyncio server for the block; see :func:`kugelwire.server.serve`."""
    handle = ServerHandle(options)
    await handle._start(host, port)
    try:
        yield handle
    finally:
        await handle.shutdown()
