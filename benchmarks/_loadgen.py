"""A lean ``/ws/tts/stream`` load generator for the scale benchmark.

The scale benchmark measures the *server*; on a 2-core machine the clients share the cores with
it, so a client that decodes every audio frame (JSON + base64, as a real application does) takes
CPU the server would otherwise get and puts its own event-loop lag into the latency it measures.
This client does the least a correct client can: it sends pre-built, masked text frames and
reads the server's frames by their headers, looking only at the first bytes of each payload to
tell audio, ``final``, ``session_closed`` and ``error`` apart. It never decodes audio.

One :class:`LeanStream` is one connection; :func:`run_turns` streams one turn on each of many
from one driver and returns, per connection, sentence-end (the flush) -> first audio frame in
seconds.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import os
import time
from collections.abc import Callable, Sequence

__all__ = ["LeanStream", "connect", "run_turns", "streams_of"]

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


#: Sends due within this of now go now: one wake-up per tick rather than per token, at a
#: pacing of 10-30 ms between tokens (the flush is timed when it is sent, so not skewed).
_TICK_S = 0.002
#: While connects are pending, the driver looks for new connections this often.
_POLL_S = 0.01


def _texts(tokens: list[str], voice_id: int) -> list[str]:
    """The turn's messages: the first token with ``voice_id``, the last with ``flush``."""
    import json

    out = []
    for i, token in enumerate(tokens):
        msg: dict[str, object] = {"text": token}
        if i == 0:
            msg["voice_id"] = voice_id
        if i == len(tokens) - 1:
            msg["flush"] = True
        out.append(json.dumps(msg, separators=(",", ":")))
    return out


async def run_turns(
    streams: Sequence[LeanStream | asyncio.Future[LeanStream]],
    tokens: list[str],
    starts: list[float],
    pause: Callable[[], float],
    timeout: float = 60.0,
    voice_id: int = 1,
) -> list[float | BaseException]:
    """Stream one turn of ``tokens`` on every stream, the i-th from ``starts[i]``
    (``time.perf_counter()``), ``pause()`` seconds between its tokens, and wait (at most
    ``timeout`` after the last send) for every ``session_closed``. A stream may be given as a
    task that connects it: its turn starts at its start or when it is connected, whichever
    is later, so one slow connect (a SYN retried after a full accept queue) delays only its own
    turn. Returns, per stream, sentence-end (the flush) -> first audio frame in seconds, or the
    error that ended it (its connect's included).

    One driver sends every token from a heap of due sends, rather than a task with a sleep per
    connection: at thousands of connections the per-connection tasks, timers and futures were
    most of the load generator's CPU, which it takes from the server it measures."""
    loop = asyncio.get_running_loop()
    texts = _texts(tokens, voice_id)
    last = len(texts) - 1
    n = len(streams)
    flushed_at = [0.0] * n
    ready: list[LeanStream | None] = [None] * n
    connect_error: list[BaseException | None] = [None] * n
    due: list[tuple[float, int, int]] = []
    unsent = n  # turns not yet flushed (or ended by an error)
    pending = 0  # connects not yet done

    def connected(i: int, stream: LeanStream) -> None:
        stream.done, stream.first_audio = loop.create_future(), None
        ready[i] = stream
        heapq.heappush(due, (starts[i], i, 0))

    def connect_ended(i: int, task: asyncio.Future[LeanStream]) -> None:
        nonlocal unsent, pending
        pending -= 1
        if task.cancelled():
            connect_error[i], unsent = asyncio.CancelledError(), unsent - 1
        elif task.exception() is not None:
            connect_error[i], unsent = task.exception(), unsent - 1
        else:
            connected(i, task.result())

    connecting = []
    for i, item in enumerate(streams):
        if isinstance(item, LeanStream):
            connected(i, item)
        else:
            pending += 1
            item.add_done_callback(functools.partial(connect_ended, i))
            connecting.append(item)
    clock = time.perf_counter
    try:
        while unsent:
            now = clock()
            if not due or due[0][0] > now + _TICK_S:
                # sleep to the next send; while connects are pending, _POLL_S at most
                wait = due[0][0] - now if due else _POLL_S
                await asyncio.sleep(min(wait, _POLL_S) if pending else wait)
                continue
            at, i, step = heapq.heappop(due)
            stream = ready[i]
            assert stream is not None and stream.done is not None
            if stream.done.done():  # failed already: nothing more to send
                unsent -= 1
                continue
            stream.send(_frame(texts[step]))
            if step == last:
                flushed_at[i] = clock()
                unsent -= 1
            else:
                heapq.heappush(due, (max(at, now) + pause(), i, step + 1))
        waits = [s.done for s in ready if s is not None and s.done is not None]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
    finally:
        for task in connecting:
            task.cancel()
    result: list[float | BaseException] = []
    for i in range(n):
        stream, error = ready[i], connect_error[i]
        if stream is None or stream.done is None:
            result.append(error if error is not None else RuntimeError("not connected"))
            continue
        done = stream.done
        if not done.done():
            done.cancel()
            result.append(TimeoutError("no session_closed in time"))
        elif done.exception() is not None:
            result.append(done.exception())  # type: ignore[arg-type]
        elif stream.first_audio is None:
            result.append(RuntimeError("no audio before session_closed"))
        else:
            result.append(stream.first_audio - flushed_at[i])
    return result


def streams_of(items: Sequence[LeanStream | asyncio.Future[LeanStream]]) -> list[LeanStream]:
    """The connected streams among ``run_turns``' items after it returned (to close them)."""
    out = []
    for item in items:
        if isinstance(item, LeanStream):
            out.append(item)
        elif item.done() and not item.cancelled() and item.exception() is None:
            out.append(item.result())
    return out
