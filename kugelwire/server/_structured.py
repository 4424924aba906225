"""The byte pump of the structured-concurrency adapters (native trio, and anyio on either of
its backends), written once against a small runtime the adapter supplies: ``Event``,
``CancelScope``, ``current_time``, ``open_nursery``, ``to_thread`` (:class:`Runtime`) and
``listen``, and a :class:`Stream` around each accepted socket.

Per connection a nursery runs a reader (socket -> core), a writer (core -> socket) and a timer
(sleeps to the core's ``next_deadline()``); engine jobs run in the server's nursery, each step in
a worker thread. Every decision is the core's.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._adapter import HandleBase, advance, linger_zero
from ._core import ConnectionCore, EngineJob, ServerOptions, SocketAction

__all__ = ["Runtime", "Stream", "StructuredServer", "serve_structured"]

_KEEP = SocketAction.KEEP


class Stream:
    """A trio or anyio socket stream as the pump sees it: a broken connection is ``False``
    from :meth:`send` and ``b""`` from :meth:`receive`, never an exception."""

    __slots__ = ("_broken", "_close", "_receive", "_send", "_sock")

    def __init__(self, send: Callable[[bytes], Any], receive: Callable[[int], Any],
                 close: Callable[[], Any], sock: Any, broken: tuple[type[BaseException], ...],
                 ) -> None:
        self._send, self._receive, self._close = send, receive, close
        self._sock, self._broken = sock, broken

    async def send(self, data: bytes) -> bool:
        """Write all of ``data``; False when the connection broke."""
        try:
            await self._send(data)
        except self._broken:
            return False
        return True

    async def receive(self) -> bytes:
        """Some bytes; ``b""`` at EOF or when the connection broke."""
        try:
            return bytes(await self._receive(65536))
        except self._broken:
            return b""

    async def close(self, reset: bool) -> None:
        """Close (``reset``: with a TCP RST)."""
        if reset:
            linger_zero(self._sock)
        await self._close()


class Runtime:
    """The primitives the pump needs; trio and anyio spell them alike (``lib`` is either
    module), except how a nursery opens and how a listener starts (``listen``)."""

    def __init__(self, lib: Any, open_nursery: Callable[[], Any], slots: int,
                 listen: Callable[..., Any]) -> None:
        self.Event, self.CancelScope = lib.Event, lib.CancelScope
        self.current_time, self.sleep = lib.current_time, lib.sleep
        self.open_nursery, self.listen = open_nursery, listen
        self._run_sync = lib.to_thread.run_sync
        self._limiter = lib.CapacityLimiter(slots)

    async def to_thread(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """``fn(arg)`` in a worker thread (at most ``slots`` at once)."""
        return await self._run_sync(fn, arg, limiter=self._limiter)


class StructuredServer(HandleBase):
    """A running trio / anyio server (what ``async with`` yields)."""

    def __init__(self, options: ServerOptions, rt: Runtime) -> None:
        super().__init__(options)
        self.rt: Any = rt
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
        items, seconds, error = await self.rt.to_thread(advance, job)
        self.core.batch_done(job, items, seconds, error, self.rt.current_time())
        if not job.peer.lost:
            job.peer.owner.kick()
        self._schedule()


class _Pump:
    def __init__(self, server: StructuredServer, stream: Stream) -> None:
        self.server, self.rt, self.stream = server, server.rt, stream
        self._changed = self.rt.Event()
        self._alarm = self.rt.Event()
        self._asleep_until: float | None = None
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
        deadline = self.core.next_deadline()
        if deadline is not None and (self._asleep_until is None or deadline < self._asleep_until):
            self._alarm.set()  # the timer sleeps past the new deadline: wake it
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
            reset = core.action is SocketAction.RESET
            last = core.data_to_send() if reset else b""  # written first, as every adapter does
            core.connection_lost(rt.current_time())
            with rt.CancelScope(shield=True):
                if last:
                    with rt.CancelScope(deadline=rt.current_time() + 1.0):
                        await self.stream.send(last)
                await self.stream.close(reset)
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
        """Sleep until the core's deadline; a later deadline needs no wake-up (the sleep just
        continues), an earlier one is signalled by :meth:`kick`."""
        core, rt = self.core, self.rt
        while True:
            deadline = self._asleep_until = core.next_deadline()
            self._alarm = rt.Event()
            with rt.CancelScope(deadline=math.inf if deadline is None else deadline):
                await self._alarm.wait()
            now = rt.current_time()
            deadline = core.next_deadline()
            if deadline is not None and now >= deadline:
                core.handle_timeout(now)
                self.kick()


@contextlib.asynccontextmanager
async def serve_structured(
    handle: StructuredServer, host: str, port: int, sock: socket.socket | None = None
) -> AsyncIterator[StructuredServer]:
    """Listen on ``host:port`` (or accept on the listening ``sock``) in a nursery for the
    block; shut down gracefully on exit."""
    rt = handle.rt
    async with rt.open_nursery() as nursery:
        handle._nursery = nursery
        handle._bound(await rt.listen(handle, host, port, nursery, sock))
        try:
            yield handle
        finally:
            with rt.CancelScope(shield=True):
                await handle.shutdown()
            nursery.cancel_scope.cancel()
