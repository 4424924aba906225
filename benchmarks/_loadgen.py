"""A lean ``/ws/tts/stream`` load generator for the scale benchmark.

The scale benchmark measures the *server*; on a 2-core machine the clients share the cores with
it, so a client that decodes every audio frame (JSON + base64, as a real application does) takes
CPU the server would otherwise get and puts its own lag into the latency it measures. This
client does the least a correct client can: one thread, one ``epoll`` (``poll`` where there is
none), no event loop, no task, future or callback per connection. It sends pre-built, masked
text frames and reads the server's frames by their headers, looking only at the first bytes of
each text payload to tell audio, ``final``, ``session_closed`` and ``error`` apart; the rest of
an audio payload is counted off as it arrives, never copied or decoded.

:func:`run` makes the connections (at most ``connects_at_once`` in flight), then, in each of
one or more rounds, streams one turn on each from its start in that round (or when it is
connected / its previous turn ended, whichever is later), waits for every ``session_closed``,
closes them all and returns, per round and connection, sentence-end (the flush) -> first audio
frame in seconds, or the error that ended the turn.

Up to 2026-12-02 this was an asyncio protocol with one driver task; at 5,000 connections its
event-loop work per turn (a transport, a callback and a future per connection, a wake-up per
read) was most of the clients' CPU, which on this machine comes out of the cores the second
worker needs.
"""

from __future__ import annotations

import base64
import errno
import heapq
import json
import os
import select
import socket
import time
from collections.abc import Callable, Sequence

__all__ = ["run"]

_AUDIO, _FINAL, _CLOSED, _ERROR = b'{"audio"', b'{"final"', b'{"session_closed"', b'{"error"'
_HEAD = 18  # payload bytes that tell the four apart (len(_CLOSED) + 1)
_READ = 1 << 18
#: Sends due within this of now go now: one wake-up per tick rather than per token, at a
#: pacing of 10-30 ms between tokens (the flush is timed when it is sent, so not skewed).
_TICK_S = 0.002
#: How often connect timeouts and new connects are looked at while nothing else is due.
_POLL_S = 0.01

# what a connection is doing
_CONNECTING, _UPGRADING, _OPEN, _ENDED = range(4)


def _frame(text: str) -> bytes:
    """A masked client text frame (FIN, opcode 1) carrying ``text``."""
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    key = os.urandom(4)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
    return head + key + masked


def _texts(tokens: list[str], voice_id: int) -> list[str]:
    """The turn's messages: the first token with ``voice_id``, the last with ``flush``."""
    out = []
    for i, token in enumerate(tokens):
        msg: dict[str, object] = {"text": token}
        if i == 0:
            msg["voice_id"] = voice_id
        if i == len(tokens) - 1:
            msg["flush"] = True
        out.append(json.dumps(msg, separators=(",", ":")))
    return out


class _Poller:
    """``select.epoll`` where there is one, else ``select.poll`` (timeouts in seconds)."""

    def __init__(self) -> None:
        epoll = getattr(select, "epoll", None)
        if epoll is not None:
            self._p: object = epoll()
            self.IN, self.OUT = select.EPOLLIN, select.EPOLLOUT
            self._ms = False
        else:
            self._p = select.poll()
            self.IN, self.OUT = select.POLLIN, select.POLLOUT
            self._ms = True
        self.register = self._p.register  # type: ignore[attr-defined]
        self.modify = self._p.modify  # type: ignore[attr-defined]
        self.unregister = self._p.unregister  # type: ignore[attr-defined]
        self._poll = self._p.poll  # type: ignore[attr-defined]

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        result: list[tuple[int, int]] = self._poll(timeout * 1e3 if self._ms else timeout)
        return result

    def close(self) -> None:
        close = getattr(self._p, "close", None)
        if close is not None:
            close()


class _Conn:
    __slots__ = (
        "buf",
        "first_audio",
        "flushed_at",
        "i",
        "out",
        "round",
        "since",
        "skip",
        "sock",
        "state",
        "step",
    )

    def __init__(self, i: int, sock: socket.socket, since: float) -> None:
        self.i = i
        self.sock = sock
        self.state = _CONNECTING
        self.buf = b""  # an incomplete frame head (or the upgrade response so far)
        self.skip = 0  # payload bytes still to come of a frame already classified
        self.out = b""  # bytes the socket did not take yet
        self.step = 0  # the next token to send
        self.since = since  # when the connect (or upgrade) began, for its timeout
        self.flushed_at = 0.0
        self.first_audio: float | None = None
        self.round = 0  # the turn being streamed: starts[round]


def run(
    host: str,
    port: int,
    path: str,
    api_key: str,
    tokens: list[str],
    starts: Sequence[Sequence[float]],
    pause: Callable[[], float],
    *,
    connects_at_once: int = 40,
    connect_timeout: float = 60.0,
    timeout: float = 60.0,
    voice_id: int = 1,
) -> list[list[float | BaseException]]:
    """Rounds of turns on ``len(starts[0])`` new connections to ``path`` (``?api_key=``): in
    round r, one turn of ``tokens`` on each, the i-th from ``starts[r][i]``
    (``time.perf_counter()``) or when it is connected / its turn of round r - 1 ended,
    whichever is later, ``pause()`` seconds between its tokens. Returns, per round and
    connection, sentence-end -> first audio in seconds or the error that ended the turn (a
    refused upgrade, a lost connection, an ``error`` frame, a connect or turn timeout: at most
    ``timeout`` after the last flush); a connection that failed has that error in its later
    rounds too. Every connection stays open until every turn is done."""
    rounds, n = len(starts), len(starts[0]) if starts else 0
    frames = [_frame(t) for t in _texts(tokens, voice_id)]
    last = len(frames) - 1
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET {path}?api_key={api_key} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    poller = _Poller()
    view = memoryview(bytearray(_READ))  # every read lands here
    IN, OUT = poller.IN, poller.OUT
    conns: dict[int, _Conn] = {}  # by fd
    results: list[list[float | BaseException | None]] = [[None] * n for _ in range(rounds)]
    due: list[tuple[float, int, int]] = []  # (when, i, fd): the connection's next send
    clock = time.perf_counter
    to_connect = 0  # the next connection to make
    inflight: dict[int, _Conn] = {}  # connects and upgrades, by fd
    left = n if rounds else 0  # connections with turns still to end
    last_flush = 0.0

    def schedule(c: _Conn, now: float) -> None:
        """``c``'s turn of its round is due at its start, or now if that has passed."""
        heapq.heappush(due, (max(starts[c.round][c.i], now), c.i, c.sock.fileno()))

    def end(c: _Conn, result: float | BaseException) -> None:
        """The connection's current turn ended: the next round's is due, or (an error, the
        last round) the connection is done."""
        nonlocal left
        if c.state == _ENDED:
            return
        results[c.round][c.i] = result
        if isinstance(result, float) and c.round + 1 < rounds:
            c.round, c.step, c.first_audio = c.round + 1, 0, None
            schedule(c, clock())
            return
        for r in range(c.round + 1, rounds):
            results[r][c.i] = result
        if c.state != _OPEN:
            del inflight[c.sock.fileno()]
        c.state = _ENDED
        left -= 1

    def fail(c: _Conn, why: str) -> None:
        end(c, RuntimeError(why))

    def send(c: _Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            fail(c, f"connection lost: {exc!r}")
            return
        if sent < len(data):
            c.out = data[sent:]
            poller.modify(c.sock.fileno(), IN | OUT)

    def received(c: _Conn, size: int, now: float) -> None:
        """The first ``size`` bytes of ``view`` came from ``c``'s socket."""
        data: bytes | memoryview = view
        at = 0
        if c.state == _UPGRADING:
            head = c.buf + view[:size]
            end_at = head.find(b"\r\n\r\n")
            if end_at < 0:
                c.buf = head
                return
            status = head[: head.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                fail(c, f"upgrade refused: {status.decode(errors='replace')}")
                return
            del inflight[c.sock.fileno()]
            c.state, c.buf = _OPEN, b""
            schedule(c, now)
            data, size = head[end_at + 4 :], len(head) - end_at - 4
        skip = c.skip
        if skip:
            if size <= skip:
                c.skip = skip - size
                return
            at, c.skip = skip, 0
        if c.buf:  # a frame head split across reads (small): join it to what came
            data = c.buf + data[at:size]
            at, size, c.buf = 0, len(data), b""
        while size - at >= 2:
            length, hdr = data[at + 1] & 0x7F, 2
            if length == 126:
                if size - at < 4:
                    break
                length, hdr = int.from_bytes(data[at + 2 : at + 4], "big"), 4
            elif length == 127:
                if size - at < 10:
                    break
                length, hdr = int.from_bytes(data[at + 2 : at + 10], "big"), 10
            start = at + hdr
            opcode = data[at] & 0x0F
            if opcode == 1:
                if size - start < min(length, _HEAD):
                    break  # not enough of the payload to tell what it is
                head = bytes(data[start : start + _HEAD])
                if head.startswith(_AUDIO):
                    if c.first_audio is None:
                        c.first_audio = clock()
                elif head.startswith(_CLOSED):
                    if c.first_audio is None:
                        fail(c, "no audio before session_closed")
                        return
                    end(c, c.first_audio - c.flushed_at)
                    if c.state == _ENDED:
                        return
                elif head.startswith(_ERROR):
                    fail(c, "the server sent an error frame")
                    return
                # final (and anything else) needs nothing: session_closed ends the turn
            elif opcode == 8:
                fail(c, "the server closed the connection")
                return
            elif size - start < length:
                break  # a ping or other control frame: wait for all of it (it is small)
            at = start + length
            if at > size:  # the rest of this payload is still to come: count it off
                c.skip = at - size
                return
        if at < size:
            c.buf = bytes(data[at:size])

    def start_connects(now: float) -> None:
        nonlocal to_connect
        while to_connect < n and len(inflight) < connects_at_once:
            i, to_connect = to_connect, to_connect + 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(i, sock, now)
            conns[sock.fileno()] = inflight[sock.fileno()] = c
            err = sock.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                fail(c, f"connect failed: {os.strerror(err)}")
                continue
            poller.register(sock.fileno(), OUT)

    try:
        while left:
            now = clock()
            if to_connect < n and len(inflight) < connects_at_once:
                start_connects(now)
            while due and due[0][0] <= now + _TICK_S:
                at, _, fd = heapq.heappop(due)
                c = conns[fd]
                if c.state != _OPEN:
                    continue  # ended already: nothing more to send
                send(c, frames[c.step])
                if c.step == last:
                    c.flushed_at = last_flush = clock()
                else:
                    c.step += 1
                    heapq.heappush(due, (max(at, now) + pause(), c.i, fd))
            if inflight:
                for c in list(inflight.values()):
                    if now - c.since > connect_timeout:
                        fail(c, f"no connection in {connect_timeout:g} s")
            elif not due and to_connect == n and last_flush and now - last_flush > timeout:
                for c in conns.values():
                    if c.state == _OPEN:
                        end(c, TimeoutError("no session_closed in time"))
                break
            wait = due[0][0] - now if due else _POLL_S * 10
            if inflight or to_connect < n:
                wait = min(wait, _POLL_S)
            for fd, ev in poller.poll(max(0.0, wait)):
                c = conns[fd]
                if c.state == _ENDED:
                    poller.unregister(fd)
                    continue
                if c.state == _CONNECTING:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, f"connect failed: {os.strerror(err)}")
                        poller.unregister(fd)
                        continue
                    c.state, c.since = _UPGRADING, clock()
                    poller.modify(fd, IN)
                    send(c, upgrade)
                    continue
                if ev & OUT and c.out:
                    data, c.out = c.out, b""
                    if ev & IN == 0:
                        poller.modify(fd, IN)
                    send(c, data)
                    if ev & IN == 0:
                        continue
                try:  # into one buffer: a fresh 256 KiB bytes per read cost page faults
                    size = c.sock.recv_into(view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    size, why = 0, f"connection lost: {exc!r}"
                else:
                    why = "connection lost: the server closed the socket"
                if not size:
                    fail(c, why)
                    poller.unregister(fd)
                    continue
                received(c, size, now)
    finally:
        for c in conns.values():
            c.sock.close()
        poller.close()
    return [[r if r is not None else RuntimeError("not run") for r in row] for row in results]
