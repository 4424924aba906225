"""A raw, message-level client over a blocking socket that records a transcript.

It sends exactly the JSON it is given and hands back exactly what the server sent: no client
session interprets anything, so the checks see the server as it is. The WebSocket layer is the
library's own byte-level :class:`~kugelwire.protocol.ClientConnection` (wsproto + h11), so
nothing beyond the default install is needed. TLS (``wss://``) uses the default context.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..protocol.ws import (
    ClientConnection,
    Connected,
    ConnectionClosed,
    ConnectionState,
    HandshakeRejected,
)

__all__ = ["Entry", "RawConnection", "Transcript"]

Direction = Literal["send", "recv", "open", "close", "reject"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a transcript: ``t`` seconds since the connection started."""

    direction: Direction
    t: float
    message: Any  # the JSON object (send/recv), the close code and reason, or the HTTP status

    def to_dict(self) -> dict[str, Any]:
        return {"dir": self.direction, "t": round(self.t, 4), "msg": self.message}


@dataclass(slots=True)
class Transcript:
    """Everything that crossed one connection, in order."""

    endpoint: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def received(self) -> list[dict[str, Any]]:
        return [e.message for e in self.entries if e.direction == "recv"]

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "entries": [e.to_dict() for e in self.entries]}


class _Recorder:
    """The message session under the ClientConnection: an outbox and a record, nothing more."""

    def __init__(self, on_message: Callable[[str], None]) -> None:
        self._outbox: list[str] = []
        self._on_message = on_message
        self.lost: tuple[int | None, str] | None = None

    def receive_message(self, text: str, now: float) -> None:
        self._on_message(text)

    def messages_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        return None

    def handle_timeout(self, now: float) -> None:
        return None

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self.lost = (code, reason)

    @property
    def close_code(self) -> int | None:
        return None

    def queue(self, text: str) -> None:
        self._outbox.append(text)


def _redact(url: str) -> str:
    return url.split("?", 1)[0]


class RawConnection:
    """One WebSocket connection to ``base_url + endpoint`` (blocking; not thread-safe).

    Raises :class:`ConnectionError` when the TCP connect or the upgrade fails.
    """

    def __init__(
        self,
        base_url: str,
        endpoint: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.transcript = Transcript(endpoint)
        self._t0 = time.monotonic()
        self._recorder = _Recorder(self._on_message)
        url = base_url.rstrip("/") + endpoint
        self._conn = ClientConnection(
            self._recorder, url, api_key=api_key, now=self._t0, keepalive_interval=None,
            handshake_timeout=timeout, max_message_size=64 * 2**20,
        )
        host, port = self._conn.address
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if self._conn.secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {_redact(url)}: {exc}") from None
        self._sock: socket.socket | None = sock
        self.closed: ConnectionClosed | None = None
        self._write()
        self._pump(lambda: self._opened is not None, timeout)
        if not self._opened:
            reject = self._rejected
            why = f"HTTP {reject.status_code}" if reject is not None else "no 101 response"
            self.close()
            raise ConnectionError(f"the upgrade to {_redact(url)} failed: {why}")
        self._log("open", None)

    _opened: bool | None = None
    _rejected: HandshakeRejected | None = None

    @property
    def now(self) -> float:
        return time.monotonic() - self._t0

    @property
    def is_open(self) -> bool:
        return self.closed is None and self._conn.state is ConnectionState.OPEN

    def _log(self, direction: Direction, message: Any) -> None:
        self.transcript.entries.append(Entry(direction, self.now, message))

    def _on_message(self, text: str) -> None:
        try:
            obj: Any = json.loads(text)
        except ValueError:
            obj = {"<not JSON>": text[:200]}
        self._log("recv", obj)

    def _events(self) -> None:
        for event in self._conn.events():
            if isinstance(event, Connected):
                self._opened = True
            elif isinstance(event, HandshakeRejected):
                self._rejected = event
                self._opened = False
                self._log("reject", event.status_code)
            elif isinstance(event, ConnectionClosed):
                self.closed = event
                if self._opened is None:
                    self._opened = False
                self._log("close", {"code": event.close_code, "reason": event.reason})

    def _write(self) -> None:
        data = self._conn.data_to_send()
        if data and self._sock is not None:
            try:
                self._sock.sendall(data)
            except OSError:
                self._conn.receive_data(b"", time.monotonic())
        self._events()

    def _pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Read until ``until()`` holds, the connection closes, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not until():
            if self._conn.state is ConnectionState.CLOSED or self._sock is None:
                self._drop_socket()
                return until()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wake = self._conn.next_deadline()
            wait = left if wake is None else max(0.0, min(left, wake - time.monotonic()))
            ready = select.select([self._sock], [], [], wait)[0]
            now = time.monotonic()
            if ready:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                self._conn.receive_data(data, now)
            else:
                self._conn.handle_timeout(now)
            self._write()
        return True

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- the API the generators use -----------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON text frame (recorded even when the socket is already closed)."""
        self._log("send", message)
        if self.is_open:
            self._recorder.queue(json.dumps(message))
            self._write()

    def send_together(self, *messages: dict[str, Any]) -> None:
        """Send several frames in one write (the server reads them in one go)."""
        for message in messages:
            self._log("send", message)
            if self.is_open:
                self._recorder.queue(json.dumps(message))
        if self.is_open:
            self._write()

    def receive_until(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float,
        quiet: float | None = None,
    ) -> bool:
        """Read until ``predicate(received messages so far)`` holds. False on timeout, on
        close, or (with ``quiet``) when nothing arrived for ``quiet`` seconds."""
        if quiet is None:
            return self._pump(lambda: predicate(self.transcript.received), timeout)
        end = time.monotonic() + timeout
        while True:
            count = len(self.transcript.entries)
            left = end - time.monotonic()
            if left <= 0:
                return predicate(self.transcript.received)
            done = self._pump(
                lambda c=count: predicate(self.transcript.received)  # type: ignore[misc]
                or len(self.transcript.entries) > c,
                min(quiet, left),
            )
            if predicate(self.transcript.received):
                return True
            if not done or not self.is_open:
                return False  # quiet (or closed)

    def settle(self, quiet: float, timeout: float) -> None:
        """Read until nothing arrived for ``quiet`` seconds (or ``timeout`` passed)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.is_open:
            count = len(self.transcript.entries)
            self._pump(lambda c=count: len(self.transcript.entries) > c,  # type: ignore[misc]
                       min(quiet, max(0.0, end - time.monotonic())))
            if len(self.transcript.entries) == count:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Close the WebSocket (code 1000) and wait for the server's close."""
        if self._conn.state is ConnectionState.OPEN:
            self._conn.close(1000)
            self._write()
            self._pump(lambda: self.closed is not None, timeout)
        self._drop_socket()

    def abort(self) -> None:
        self._drop_socket()
