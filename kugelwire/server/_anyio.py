"""The anyio adapter: the structured byte pump (:mod:`._structured`) on anyio's sockets, task
groups and worker threads, so it runs on either anyio backend (asyncio or trio)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from ._core import ServerOptions
from ._structured import Runtime, Stream, StructuredServer, serve_structured

__all__ = ["AnyioServerHandle", "serve"]

_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class AnyioServerHandle(StructuredServer):
    """A running anyio server (what ``async with serve(..., backend="anyio")`` yields)."""

    backend = "anyio"


async def _listen(handle: AnyioServerHandle, host: str, port: int, nursery: Any,
                  sock: socket.socket | None) -> Any:
    if sock is not None:  # a listening socket made elsewhere (``serve --workers``)
        if not hasattr(SocketListener, "from_socket"):
            raise RuntimeError("serving on a given socket needs anyio 4.10 or later")
        listener: Any = await SocketListener.from_socket(sock)
    else:
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, backlog=handle.options.backlog)

    async def handler(stream: SocketStream) -> None:
        await handle.serve_stream(Stream(stream.send, stream.receive, stream.aclose,
                                        stream.extra(SocketAttribute.raw_socket), _BROKEN))

    async def run() -> None:
        with handle._listen_scope:
            async with listener:
                await listener.serve(handler, task_group=nursery)

    nursery.start_soon(run)
    return listener.extra(SocketAttribute.local_address)


@asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions, *,
                sock: socket.socket | None = None) -> AsyncIterator[AnyioServerHandle]:
    """Run an anyio server for the block (on whichever backend runs it). With ``sock`` (a
    bound, listening socket) ``host`` and ``port`` are ignored."""
    handle = AnyioServerHandle(
        options, Runtime(anyio, anyio.create_task_group, options.slots, _listen))
    async with serve_structured(handle, host, port, sock):
        yield handle
