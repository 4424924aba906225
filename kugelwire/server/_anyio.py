"""The anyio adapter: the structured byte pump (:mod:`._structured`) on anyio's sockets, task
groups and worker threads, so it runs on either anyio backend (asyncio or trio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from ._adapter import linger_zero
from ._core import ServerOptions
from ._structured import StructuredServer, serve_structured

__all__ = ["AnyioServerHandle", "serve"]

_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class AnyioServerHandle(StructuredServer):
    """A running anyio server (what ``async with serve(..., backend="anyio")`` yields)."""

    backend = "anyio"


class _AnyioStream:
    __slots__ = ("_s",)

    def __init__(self, stream: SocketStream) -> None:
        self._s = stream

    async def send(self, data: bytes) -> bool:
        try:
            await self._s.send(data)
        except _BROKEN:
            return False
        return True

    async def receive(self) -> bytes:
        try:
            return await self._s.receive(65536)
        except _BROKEN:
            return b""

    async def close(self, reset: bool) -> None:
        if reset:
            linger_zero(self._s.extra(SocketAttribute.raw_socket))
        await self._s.aclose()


class _Runtime:
    Event = anyio.Event
    CancelScope = anyio.CancelScope
    current_time = staticmethod(anyio.current_time)
    open_nursery = staticmethod(anyio.create_task_group)
    sleep = staticmethod(anyio.sleep)

    def __init__(self, slots: int) -> None:
        self._limiter = anyio.CapacityLimiter(slots)

    async def to_thread(self, fn: Any, arg: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, arg, limiter=self._limiter)

    async def listen(self, handle: AnyioServerHandle, host: str, port: int, nursery: Any) -> Any:
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, backlog=handle.options.backlog)

        async def handler(stream: SocketStream) -> None:
            await handle.serve_stream(_AnyioStream(stream))

        async def run() -> None:
            with handle._listen_scope:
                async with listener:
                    await listener.serve(handler, task_group=nursery)

        nursery.start_soon(run)
        return listener.extra(SocketAttribute.local_address)


@asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions) -> AsyncIterator[AnyioServerHandle]:
    """Run an anyio server for the block (on whichever backend runs it)."""
    handle = AnyioServerHandle(options, _Runtime(options.slots))
    async with serve_structured(handle, host, port):
        yield handle
