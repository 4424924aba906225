"""The native trio adapter: the structured byte pump (:mod:`._structured`) on trio's own
sockets, events, cancel scopes and worker threads (no anyio layer in between)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._core import ServerOptions
from ._structured import Runtime, Stream, StructuredServer, serve_structured

__all__ = ["TrioServerHandle", "serve"]

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TrioServerHandle(StructuredServer):
    """A running trio server (what ``async with trio_serve(...)`` yields)."""

    backend = "trio"


async def _listen(handle: TrioServerHandle, host: str, port: int, nursery: Any,
                  sock: socket.socket | None) -> Any:
    async def handler(stream: trio.SocketStream) -> None:
        await handle.serve_stream(
            Stream(stream.send_all, stream.receive_some, stream.aclose, stream.socket, _BROKEN))

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with handle._listen_scope:
            if sock is not None:  # a listening socket made elsewhere (``serve --workers``)
                listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
            else:
                listeners = await trio.open_tcp_listeners(
                    port, host=host, backlog=handle.options.backlog)
            await trio.serve_listeners(handler, listeners, handler_nursery=nursery,
                                       task_status=task_status)

    listeners = await nursery.start(run)
    return listeners[0].socket.getsockname()


@asynccontextmanager
async def serve(host: str, port: int, options: ServerOptions, *,
                sock: socket.socket | None = None) -> AsyncIterator[TrioServerHandle]:
    """Run a trio server for the block; see :func:`kugelwire.server.trio_serve`. With ``sock``
    (a bound, listening socket) ``host`` and ``port`` are ignored."""
    handle = TrioServerHandle(options, Runtime(trio, trio.open_nursery, options.slots, _listen))
    async with serve_structured(handle, host, port, sock):
        yield handle
