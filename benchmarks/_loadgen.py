"""A lean ``/ws/tts/stream`` load generator for the scale benchmark.

The scale benchmark measures the *server*; on a 2-core machine the clients share the cores with
it, so a client that decodes every audio frame (JSON + base64, as a real application does) takes
CPU the server would otherwise get and puts its own event-loop lag into the latency it measures.
This client does the least a correct client can: it sends pre-built, masked text frames and
reads the server's frames by their headers, looking only at the first bytes of each payload to
tell audio, ``final``, ``session_closed`` and ``error`` apart. It never decodes audio.

One :class:`LeanStream` is one connection; :func:`turn` streams one turn on it and returns
sentence-end (the flush) -> first audio frame in seconds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

__all__ = ["LeanStream", "connect", "turn"]

_AUDIO, _FINAL, _CLOSED, _ERROR = b'{"audio"', b'{"final"', b'{"session_closed"', b'{"error"'


def _frame(text: str) -> bytes:
    """A masked client text frame (FIN, opcode 1) carrying ``text``."""
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    key = os.urandom(4)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
    return head + key + masked


class LeanStream(asyncio.Protocol):
    """One connection: the upgrade, then server frames classified by their first bytes."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] | None = None  # the current turn's session_closed
        self.first_audio: float | None = None
        self._buf = bytearray()
        self._open = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status + b" ":
                self._fail(f"upgrade refused: {status.decode(errors='replace')}")
                return
            self._open = True
            self.upgraded.set_result(None)
        at, size = 0, len(buf)
        while size - at >= 2:
            length, hdr = buf[at + 1] & 0x7F, 2
            if length == 126:
                if size - at < 4:
                    break
                length, hdr = int.from_bytes(buf[at + 2 : at + 4], "big"), 4
            elif length == 127:
                if size - at < 10:
                    break
                length, hdr = int.from_bytes(buf[at + 2 : at + 10], "big"), 10
            if size - at < hdr + length:
                break
            opcode = buf[at] & 0x0F
            start = at + hdr
            at = start + length
            if opcode == 1:
                self._message(bytes(buf[start : start + 18]))
            elif opcode == 8:
                self._fail("the server closed the connection")
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}")

    # -- the turn ---------------------------------------------------------------------------
    def _message(self, head: bytes) -> None:
        if head.startswith(_AUDIO):
            if self.first_audio is None:
                self.first_audio = time.perf_counter()
        elif head.startswith(_CLOSED):
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
        elif head.startswith(_ERROR):
            self._fail("the server sent an error frame")
        # final (and anything else) needs nothing: session_closed ends the turn

    def _fail(self, why: str) -> None:
        for fut in (self.upgraded, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError(why))

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int, path: str, api_key: str) -> LeanStream:
    """A connection upgraded on ``path`` (``?api_key=``)."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(LeanStream, host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path}?api_key={api_key} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    proto.send(request.encode())
    await proto.upgraded
    return proto


async def turn(
    stream: LeanStream, tokens: list[str], pause: object, voice_id: int = 1
) -> float:
    """Stream ``tokens`` as one turn (the first with ``voice_id``, the last with ``flush``;
    ``await pause()`` between tokens) and wait for ``session_closed``. Returns flush -> first
    audio frame (seconds)."""
    import json

    loop = asyncio.get_running_loop()
    stream.done, stream.first_audio = loop.create_future(), None
    *body, last = tokens
    for i, token in enumerate(body):
        msg = {"text": token, "voice_id": voice_id} if i == 0 else {"text": token}
        stream.send(_frame(json.dumps(msg, separators=(",", ":"))))
        await pause()  # type: ignore[operator]
    t0 = time.perf_counter()
    stream.send(_frame(json.dumps({"text": last, "flush": True}, separators=(",", ":"))))
    await stream.done
    if stream.first_audio is None:
        raise RuntimeError("no audio before session_closed")
    return stream.first_audio - t0
