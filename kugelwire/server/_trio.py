"""The native trio adapter: the structured byte pump (:mod:`._structured`) on trio's own
sockets, events, cancel scopes and worker threads (no anyio layer in between)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._adapter import linger_zero
from ._core import ServerOptions
from ._structured import StructuredServer, serve_structured

__all__ = ["TrioServerHandle", "serve"]

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TrioServerHandle(StructuredServer):
    """A running trio server (what ``async with trio_serve(...)`` yields)."""

    backend = "trio"


class _TrioStream:
    __slots__ = ("_s",)

    def __init__(self, stream: trio.SocketStream) -> None:
        self._s = stream

    async def send(self, data: bytes) -> bool:
        try:
            await self._s.send_all(data)
        except _BROKEN:
            return False
        return True

    async def receive(self) -> bytes:
        try:
            return bytes(await self._s.receive_some(65536))
        except _BROKEN:
            return b""

    async def close(self, reset: bool) -> None:
        if reset:
            linger_zero(self._s.socket)
        await self._s.aclose()


class _Runtime:
    Event = trio.Event
    CancelScope = trio.CancelScope
    current_time = staticmethod(trio.current_time)
    open_nursery = staticmethod(trio.open_nursery)
    sleep = staticmethod(trio.sleep)

    def __init__(self, slots: int) -> None:
        self._limiter = trio.CapacityLimiter(slots)

    async def to_thread(self, fn: Any, arg: Any) -> Any:
        return await trio.to_thread.run_sync(fn, arg, limiter=self._limiter)

    async def listen(self, handle: TrioServerHandle, host: str, port: int, nursery: Any) -> Any:
        async def handler(stream: trio.SocketStream) -> None:
            await handle.serve_stream(_TrioStream(stream))

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with handle._listen_scope:
                await trio.serve_tcp(handler, port, host=host, handler_nursery=nursery,
                                     backlog=handle.options.backlog, task_status=task_status)

        listeners = await nursery.start(run)
        return listeners[0].socket.getsockname()


@asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions) -> AsyncIterator[TrioServerHandle]:
    """Run a trio server for the block; see :func:`kugelwire.server.trio_serve`."""
    handle = TrioServerHandle(options, _Runtime(options.slots))
    async with serve_structured(handle, host, port):
        yield handle
