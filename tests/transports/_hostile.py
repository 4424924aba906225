"""Hostile loopback servers for the client's I/O limits (one thread, blocking sockets).

* ``flood_audio``: a real protocol peer (the sans-IO server core) that, once a turn is flushed,
  streams audio for it at ~``rate`` bytes/s and never finishes the turn;
* ``stall``: upgrades, then never reads (nor sends) again;
* ``ping_flood``: upgrades, then sends pings as fast as the client takes them and never reads;
* ``hang_up``: upgrades, reads the client's first message, then closes the connection
  ``hang_up_after`` seconds later (no close frame: a drop).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import struct
import threading
import time
from typing import Any

from kugelwire.protocol._server import StreamServerSession, SynthesisRequested
from kugelwire.protocol._ws import ServerConnection

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            raise ConnectionError("closed before the upgrade")
        data += part
    return data


def _accept_upgrade(sock: socket.socket) -> None:
    head = _read_head(sock).decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )


class HostileServer:
    def __init__(self, mode: str, *, rate: int = 20 * 2**20, hang_up_after: float = 0.3) -> None:
        self.mode = mode
        self.rate = rate
        self.hang_up_after = hang_up_after
        self.sent = 0  # bytes sent (flood modes)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._handlers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in sendall
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)
        for thread in self._handlers:
            thread.join(5)

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            self._socks.append(sock)
            thread = threading.Thread(target=self._handle, args=(sock,), daemon=True)
            self._handlers.append(thread)
            thread.start()

    def _handle(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            getattr(self, "_" + self.mode)(sock)

    def _stall(self, sock: socket.socket) -> None:
        _accept_upgrade(sock)
        self._stop.wait()

    def _hang_up(self, sock: socket.socket) -> None:
        _accept_upgrade(sock)
        if sock.recv(65536):
            self._stop.wait(self.hang_up_after)
        sock.close()

    def _ping_flood(self, sock: socket.socket) -> None:
        _accept_upgrade(sock)
        batch = (b"\x89\x7d" + bytes(125)) * 512  # big pings: every one costs a big pong
        while not self._stop.is_set():
            sock.sendall(batch)
            self.sent += len(batch)

    def _flood_audio(self, sock: socket.socket) -> None:
        session = StreamServerSession()
        conn = ServerConnection(lambda path: session, now=time.monotonic())
        ref = None
        while ref is None and not self._stop.is_set():
            data = sock.recv(65536)
            if not data:
                return
            conn.receive_data(data, time.monotonic())
            for _ in conn.events():
                pass
            for event in session.events():
                if isinstance(event, SynthesisRequested):
                    ref = event.ref
            sock.sendall(conn.data_to_send())
        pcm = bytes(48_000)  # 1 s at 24 kHz
        start = time.monotonic()
        while not self._stop.is_set():
            session.send_audio(ref, pcm, time.monotonic())
            out = conn.data_to_send()
            sock.sendall(out)
            self.sent += len(out)
            ahead = self.sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
