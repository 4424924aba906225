"""A tiny raw asyncio client for runner tests: ClientConnection + a client session over streams."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from kugelwire.protocol._client import _ClientSession
from kugelwire.protocol._events import ClientEvent, ConnectionTerminated
from kugelwire.protocol._ws import (
    ClientConnection,
    Connected,
    ConnectionClosed,
    ConnectionState,
    HandshakeRejected,
)


class RawClient:
    """Drive ``session`` over a real socket; collect every client and connection event."""

    def __init__(
        self, session: _ClientSession, url: str, *, api_key: str | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = session
        self.conn = ClientConnection(
            session, url + session.endpoint, api_key=api_key, now=self.loop.time(),
            keepalive_interval=None,
        )
        self.rcvbuf = rcvbuf
        self.events: list[ClientEvent] = []
        self.conn_events: list[Any] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.bytes_received = 0

    @property
    def now(self) -> float:
        return self.loop.time()

    async def connect(self) -> RawClient:
        host, port = self.conn.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await self.loop.sock_connect(sock, (host, port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=2**16)
        self.flush()
        await self.pump(lambda: self.connected or self.rejected is not None or self.closed)
        return self

    @property
    def connected(self) -> bool:
        return any(isinstance(e, Connected) for e in self.conn_events)

    @property
    def rejected(self) -> HandshakeRejected | None:
        return next((e for e in self.conn_events if isinstance(e, HandshakeRejected)), None)

    @property
    def closed(self) -> ConnectionClosed | None:
        return next((e for e in self.conn_events if isinstance(e, ConnectionClosed)), None)

    def flush(self) -> None:
        """Write whatever the connection has to send (call after session methods)."""
        data = self.conn.data_to_send()
        if data and self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)
        self._collect()

    def _collect(self) -> None:
        self.conn_events.extend(self.conn.events())
        self.events.extend(self.session.events())

    def of(self, kind: type[Any] | tuple[type[Any], ...]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read and process until ``until()`` holds (or the connection closes)."""
        assert self.reader is not None

        async def run() -> None:
            while not until():
                if self.conn.state is ConnectionState.CLOSED:
                    return
                data = await self.reader.read(2**16)  # type: ignore[union-attr]
                self.bytes_received += len(data)
                self.conn.receive_data(data, self.now)
                self.flush()

        await asyncio.wait_for(run(), timeout)

    async def until_closed(self, timeout: float = 10.0) -> ConnectionClosed:
        await self.pump(lambda: self.closed is not None, timeout)
        closed = self.closed
        assert closed is not None
        return closed

    def terminated(self) -> ConnectionTerminated | None:
        return next((e for e in self.of(ConnectionTerminated)), None)

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
