"""The asyncio adapter: an :class:`asyncio.Protocol` per connection moves bytes between the
socket and its :class:`~kugelwire.server._core.ConnectionCore`, one loop timer follows the
core's ``next_deadline()``, and engine jobs run in a thread pool (or, for an engine whose steps
are quick and never block, as loop callbacks). It decides nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

from ._adapter import HandleBase, Step, advance, linger_zero
from ._core import EngineJob, ServerOptions, SocketAction

__all__ = ["ServerHandle", "serve"]

_KEEP, _CLOSE, _RESET = SocketAction.KEEP, SocketAction.CLOSE, SocketAction.RESET


class ServerHandle(HandleBase):
    """A running asyncio server (what ``async with serve(...)`` yields)."""

    backend = "asyncio"

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.AbstractServer | None = None
        self._pool = ThreadPoolExecutor(options.slots, thread_name_prefix="kugelwire-engine")
        self._inline = options.inline
        self._running = False  # inside _run_now

    async def _start(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        if sock is not None:  # a listening socket made elsewhere (``serve --workers``)
            self._server = await self._loop.create_server(
                lambda: _Connection(self), sock=sock, backlog=self.options.backlog)
        else:
            self._server = await self._loop.create_server(
                lambda: _Connection(self), host, port, backlog=self.options.backlog)
        self._bound(self._server.sockets[0].getsockname())

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful restart: idle sockets close with ``code`` now, busy ones after their turn;
        connections arriving meanwhile are accepted and closed with 1013; then the listener
        closes. Connections still open after ``timeout`` seconds are aborted."""
        limit = self.options.shutdown_timeout if timeout is None else timeout
        self.core.shutdown(code, self._loop.time())
        self._flush_all()
        await self._until(lambda: not self.core.connections, limit)
        if self._server is not None:
            self._server.close()
        self.core.abort_all()
        self._flush_all()
        await self._until(lambda: self._idle, limit)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._pool.shutdown(wait=False)

    async def _until(self, done: object, limit: float) -> None:
        deadline = self._loop.time() + limit
        while not done() and self._loop.time() < deadline:  # type: ignore[operator]
            await asyncio.sleep(0.01)

    def _flush_all(self) -> None:
        for peer in list(self.core.connections):
            peer.owner.flush()

    def _schedule(self) -> None:
        if self._inline:  # quick, non-blocking steps: on the loop, each its own callback
            for job in self.core.take_jobs():
                self._loop.call_soon(self._run_inline, job)
            return
        for job in self.core.take_jobs():
            fut = self._pool.submit(advance, job)
            fut.add_done_callback(functools.partial(self._from_worker, job))

    def _run_inline(self, job: EngineJob) -> None:
        self._job_done(job, advance(job))

    def _run_now(self) -> None:
        """Inline engines: advance the next ready job now, before a connection writes, so a
        turn's first audio leaves in the same write as what started it. One job at most (the
        loop is held for one worker call's budget): the others, and jobs offered again
        meanwhile, run as loop callbacks."""
        if self._running:
            return
        jobs = self.core.take_jobs()
        if not jobs:
            return
        for job in jobs[1:]:
            self._loop.call_soon(self._run_inline, job)
        self._running = True
        try:
            self._job_done(jobs[0], advance(jobs[0]))
        finally:
            self._running = False

    def _from_worker(self, job: EngineJob, fut: Future[Step]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._job_done, job, fut.result())

    def _job_done(self, job: EngineJob, step: Step) -> None:
        self.core.batch_done(job, *step, self._loop.time())
        if not job.peer.lost:
            job.peer.owner.flush()
        self._schedule()


class _Connection(asyncio.Protocol):
    __slots__ = ("_core", "_deadline", "_loop", "_reading", "_server", "_timer", "_transport")

    def __init__(self, server: ServerHandle) -> None:
        self._server = server
        self._loop = server._loop
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = t = cast(asyncio.Transport, transport)
        limit = self._server.options.write_buffer_limit
        t.set_write_buffer_limits(high=limit - 1, low=min(limit // 4, limit - 1))
        self._core = self._server.core.connect(self._loop.time())
        self._core.owner = self
        self.flush()

    def data_received(self, data: bytes) -> None:
        self._core.receive_data(data, self._loop.time())
        self.flush()

    def eof_received(self) -> bool | None:
        self._core.receive_data(b"", self._loop.time())
        self.flush()
        return None  # let the transport close once its buffer is written

    def connection_lost(self, exc: Exception | None) -> None:
        self._core.connection_lost(self._loop.time())
        if self._timer is not None:
            self._timer.cancel()
        self._server._schedule()

    def resume_writing(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Write what the core produced, obey its socket action, re-arm the timer."""
        if self._server._inline:
            self._server._run_now()
        core, t = self._core, self._transport
        data = core.data_to_send()
        if data and not t.is_closing():
            t.write(data)
        core.report_buffered(t.get_write_buffer_size())
        action = core.action
        if action is _KEEP or action is _CLOSE:
            if core.reading is not self._reading:
                self._reading = core.reading
                (t.resume_reading if self._reading else t.pause_reading)()
            if action is _CLOSE and not t.is_closing():
                t.close()
            deadline = core.next_deadline()
            if deadline != self._deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._deadline = deadline
                self._timer = None if deadline is None else self._loop.call_at(
                    deadline, self._on_timer)
        else:
            if action is _RESET:
                linger_zero(t.get_extra_info("socket"))
            t.abort()
        self._server._schedule()

    def _on_timer(self) -> None:
        self._timer = self._deadline = None
        self._core.handle_timeout(self._loop.time())
        self.flush()


@contextlib.asynccontextmanager
async def serve(
    host: str, port: int, options: ServerOptions, *, sock: socket.socket | None = None
) -> AsyncIterator[ServerHandle]:
    """Run an asyncio server for the block; see :func:`kugelwire.server.serve`. With ``sock``
    (a bound, listening socket) ``host`` and ``port`` are ignored."""
    handle = ServerHandle(options)
    await handle._start(host, port, sock)
    try:
        yield handle
    finally:
        await handle.shutdown()

