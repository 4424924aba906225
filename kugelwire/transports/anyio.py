"""anyio transport for the three client roles: the asyncio / trio API for code written against
anyio, on either of its backends (``anyio.run(main, backend="asyncio")`` or ``"trio"``).

    async with connect_stream(url, api_key=key, voice_id=1) as stream:
        turn = await stream.send_text("Hello world.", flush=True)
        async for event in turn: ...

**Task-group scoped.** anyio has no detached tasks (nothing like trio's system tasks or
``asyncio.create_task`` that outlives its caller), so the connection's reader and timer tasks
live in a task group that ``async with connect_*(...)`` opens and closes: the connection exists
only inside that block, and leaving the block (normally, by an exception or a cancellation)
closes it before the block is left. ``await connect_stream(...)`` therefore raises
:class:`~kugelwire.errors.LocalProtocolError`; use ``async with``.

Everything else is shared with the other adapters: the task driver with the trio adapter
(:mod:`kugelwire.transports._tasks`), the API objects with asyncio and trio
(:mod:`kugelwire.transports._api`), every decision with the sans-IO core. Backpressure (bounded
buffers, reading pauses above ``max_buffered_bytes``), write timeouts and the outgoing-buffer cap
behave as in every adapter; only the typed exceptions of :mod:`kugelwire.errors` (and
``LocalProtocolError``) escape.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from . import _api
from ._api import (
    AsyncContext,
    AsyncMulti,
    AsyncRequest,
    AsyncStream,
    AsyncTTS,
    AsyncTurn,
    ConnectOptions,
    Scoped,
)
from ._core import ClientCore
from ._tasks import READ_SIZE, TaskDriver

__all__ = ["AsyncContext", "AsyncMulti", "AsyncRequest", "AsyncStream", "AsyncTTS", "AsyncTurn",
           "Scoped", "connect_multi", "connect_stream", "connect_tts"]


class _Driver(TaskDriver):
    """The task driver on anyio byte streams, its tasks in the connection's task group."""

    lib = anyio
    io_errors = (
        OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
        _ssl.SSLError,
    )

    def __init__(self, core: ClientCore, options: ConnectOptions, group: Any) -> None:
        super().__init__(core, options)
        self._group = group

    async def connect(self, host: str, port: int, ssl: _ssl.SSLContext | None) -> Any:
        if ssl is None:
            return await anyio.connect_tcp(host, port)
        return await anyio.connect_tcp(host, port, ssl_context=ssl, tls_hostname=host)

    async def receive(self, stream: Any) -> bytes:
        try:
            return bytes(await stream.receive(READ_SIZE))
        except anyio.EndOfStream:
            return b""

    async def send_all(self, stream: Any, data: bytes) -> None:
        await stream.send(data)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._group.start_soon(fn)


connect_stream, connect_multi, connect_tts = _api.scoped_connectors(
    _Driver, anyio.current_time, anyio.create_task_group, "anyio, task-group scoped"
)
