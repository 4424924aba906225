"""A replay server: the client side of a benchmark measured without the server setting the pace.

It speaks ``/ws/tts/stream`` just enough for the client benchmark: it accepts any upgrade
(wsproto), collects the text of a turn and, on ``flush`` (or ``close``), writes the whole turn
at once as pre-encoded bytes: ``generation_started``, ``n`` audio frames of 20 ms (480 samples
of 24 kHz PCM16; ``n`` from a leading number in the turn's text, else 50), ``chunk_complete``,
``final`` and ``session_closed``. Building a turn costs it about 0.3 us per frame (a join of
pieces built once; a string format per frame cost 1.4 us, which every client waited through
before its first byte), so the clients, not the server, are what the wall time measures.
Nothing is validated: it is a load generator, not a test double.

    python -m benchmarks._replay      # prints "PORT <n>"; exits when stdin closes
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import resource
import sys

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.utilities import LocalProtocolError

__all__ = ["turn_bytes"]

SR = 24000
SAMPLES = 480  # 20 ms
_COUNT = re.compile(r"\s*(\d+)")
_PCM = bytes((i * 7919 + (i >> 9)) & 0xFF for i in range(SAMPLES * 2))
_AUDIO = base64.b64encode(_PCM).decode("ascii")


def _frame(payload: bytes) -> bytes:
    """One unmasked final text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


#: Each frame's text up to its chunk_id's digits, by idx (built once: a turn then costs a join)
_AUDIO_HEADS: list[bytes] = []


def _audio_head(idx: int) -> bytes:
    while len(_AUDIO_HEADS) <= idx:
        i = len(_AUDIO_HEADS)
        _AUDIO_HEADS.append(
            f'{{"audio":"{_AUDIO}","enc":"pcm_s16le","idx":{i},"sr":{SR},"samples":{SAMPLES},'
            '"chunk_id":'.encode()
        )
    return _AUDIO_HEADS[idx]


def turn_bytes(frames: int, chunk_id: int) -> bytes:
    """Every server message of one turn of ``frames`` audio frames, framed, in one string.
    The audio frames are joined from pieces built once (a few hundred nanoseconds a frame), so
    building a turn adds little to the wall time the clients are measured by."""
    seconds = frames * SAMPLES / SR
    tail = f"{chunk_id}}}".encode()
    parts = [_frame(f'{{"generation_started":true,"chunk_id":{chunk_id},"text":"x"}}'.encode())]
    for i in range(frames):
        head = _audio_head(i)
        n = len(head) + len(tail)
        if 126 <= n < 65536:  # a 16-bit length (every 20 ms frame)
            parts += (b"\x81\x7e" + n.to_bytes(2, "big"), head, tail)
        else:
            parts.append(_frame(head + tail))
    texts = [
        f'{{"chunk_complete":true,"chunk_id":{chunk_id},"audio_seconds":{seconds},"gen_ms":1.0}}',
        f'{{"final":true,"chunk_id":{chunk_id},"total_audio_seconds":{seconds}}}',
        f'{{"session_closed":true,"total_audio_seconds":{seconds},"total_text_chunks":1,'
        f'"total_audio_chunks":{frames}}}',
    ]
    parts += [_frame(t.encode()) for t in texts]
    return b"".join(parts)


class _Replay(asyncio.Protocol):
    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.transport: asyncio.Transport | None = None
        self.text: list[str] = []
        self.parts: list[str] = []
        self.chunk_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.transport.write(self.ws.send(AcceptConnection()))
            elif isinstance(event, TextMessage):
                self.parts.append(event.data)
                if event.message_finished:
                    self._message(json.loads("".join(self.parts)))
                    self.parts.clear()
            elif isinstance(event, Ping):
                self.transport.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):  # our own close's answer
                    self.transport.write(self.ws.send(event.response()))
                self.transport.close()

    def _message(self, obj: dict[str, object]) -> None:
        assert self.transport is not None
        text = obj.get("text")
        if isinstance(text, str):
            self.text.append(text)
        if obj.get("flush") or obj.get("close"):
            m = _COUNT.match("".join(self.text))
            self.text.clear()
            self.transport.write(turn_bytes(int(m.group(1)) if m else 50, self.chunk_id))
            self.chunk_id += 1
        if obj.get("close_socket"):
            self.transport.write(self.ws.send(CloseConnection(code=1000)))


async def _main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Replay, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes our stdin
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"USAGE {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}", flush=True)
    server.close()


if __name__ == "__main__":
    asyncio.run(_main())
