"""The byte pump of the structured-concurrency adapters (native trio, and anyio on either of
its backends), written once against a small runtime the adapter supplies: ``Event``,
``CancelScope``, ``current_time``, ``open_nursery``, ``to_thread`` and ``listen``, plus a
stream with ``send`` / ``receive`` / ``close(reset)``.

Per connection a nursery runs a reader (socket -> core), a writer (core -> socket) and a timer
(sleeps to the core's ``next_deadline()``); engine jobs run in the server's nursery, each step in
a worker thread. Every decision is the core's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ._adapter import HandleBase, advance
from ._core import ConnectionCore, EngineJob, ServerOptions, SocketAction

__all__ = ["Stream", "StructuredServer", "serve_structured"]

_KEEP = SocketAction.KEEP


class Stream(Protocol):
    async def send(self, data: bytes) -> bool:
        """Write all of ``data``; False when the connection broke."""
        ...

    async def receive(self) -> bytes:
        """Some bytes; ``b""`` at EOF or when the connection broke."""
        ...

    async def close(self, reset: bool) -> None: ...


class StructuredServer(HandleBase):
    """A running trio / anyio server (what ``async with`` yields)."""

    def __init__(self, options: ServerOptions, rt: Any) -> None:
        super().__init__(options)
        self.rt = rt
        self._nursery: Any = None
        self._listen_scope = rt.CancelScope()

    async def serve_stream(self, stream: Stream) -> None:
        """The listener's handler: pump one connection until it is over."""
        await _Pump(self, stream).run()

    async def shutdown(self, code: int = 1012, timeout: float | None = None) -> None:
        """Graceful restart, as :meth:`kugelwire.server.ServerHandle.shutdown`."""
        rt, core = self.rt, self.core
        limit = self.options.shutdown_timeout if timeout is None else timeout
        core.shutdown(code, rt.current_time())
        self._kick_all()
        await self._until(lambda: not core.connections, limit)
        self._listen_scope.cancel()
        core.abort_all()
        self._kick_all()
        await self._until(lambda: self._idle, limit)

    async def _until(self, done: Callable[[], bool], limit: float) -> None:
        with self.rt.CancelScope(deadline=self.rt.current_time() + limit):
            while not done():
                await self.rt.sleep(0.01)

    def _kick_all(self) -> None:
        for peer in list(self.core.connections):
            peer.owner.kick()

    def _schedule(self) -> None:
        for job in self.core.take_jobs():
            self._nursery.start_soon(self._run_job, job)

    async def _run_job(self, job: EngineJob) -> None:
        item, seconds, error = await self.rt.to_thread(advance, job)
        self.core.job_done(job, item, seconds, error, self.rt.current_time())
        if not job.peer.lost:
            job.peer.owner.kick()
        self._schedule()


class _Pump:
    def __init__(self, server: StructuredServer, stream: Stream) -> None:
        self.server, self.rt, self.stream = server, server.rt, stream
        self._changed = self.rt.Event()
        self._scope: Any = None
        self.core: ConnectionCore = server.core.connect(self.rt.current_time())
        self.core.owner = self

    def kick(self) -> None:
        """Something changed: wake the tasks, start jobs; an abort cancels the connection."""
        action = self.core.action
        if action is not _KEEP and action is not SocketAction.CLOSE and self._scope is not None:
            self._scope.cancel()
        changed, self._changed = self._changed, self.rt.Event()
        changed.set()
        self.server._schedule()

    async def run(self) -> None:
        rt, core = self.rt, self.core
        try:
            async with rt.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._reader)
                nursery.start_soon(self._timer)
                self.kick()
                await self._writer()
                nursery.cancel_scope.cancel()
        finally:
            core.connection_lost(rt.current_time())
            with rt.CancelScope(shield=True):
                await self.stream.close(core.action is SocketAction.RESET)
            self.server._schedule()

    async def _writer(self) -> None:
        core = self.core
        while core.action is _KEEP or core.action is SocketAction.CLOSE:
            data = core.data_to_send()
            if data:
                if not await self.stream.send(data):
                    return
                core.report_buffered(0)
                self.kick()
            elif core.action is _KEEP:
                await self._changed.wait()
            else:
                return  # closed and flushed

    async def _reader(self) -> None:
        core = self.core
        while True:
            while not core.reading:
                await self._changed.wait()
            data = await self.stream.receive()
            core.receive_data(data, self.rt.current_time())
            self.kick()
            if not data:
                return

    async def _timer(self) -> None:
        core, rt = self.core, self.rt
        while True:
            changed, deadline = self._changed, core.next_deadline()
            if deadline is None:
                await changed.wait()
                continue
            with rt.CancelScope(deadline=deadline):
                await changed.wait()
            if rt.current_time() >= deadline:
                core.handle_timeout(rt.current_time())
                self.kick()


@contextlib.asynccontextmanager
async def serve_structured(
    handle: StructuredServer, host: str, port: int
) -> AsyncIterator[StructuredServer]:
    """Listen on ``host:port`` in a nursery for the block; shut down gracefully on exit."""
    rt = handle.rt
    async with rt.open_nursery() as nursery:
        handle._nursery = nursery
        handle._bound(await rt.listen(handle, host, port, nursery))
        try:
            yield handle
        finally:
            with rt.CancelScope(shield=True):
                await handle.shutdown()
            nursery.cancel_scope.cancel()
