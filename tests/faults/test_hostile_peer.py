"""Hostile peers on real sockets (127.0.0.1), both roles, bounded in time: every attack runs on
every server backend and every client adapter.

Server role: raw sockets against each backend (asyncio, trio, anyio, sync: ``run_in_thread``,
in a thread of this process, so its memory is this process's RSS) and the ASGI app under
uvicorn: empty-fragment floods, drips into a frame that never finishes, and lenient-handshake
tricks (framing-level: skipped under uvicorn, whose framing is its own); while a single
connection attacks, another client's turn must still complete within 1 s (and none may hang).

Client role: a hostile raw server (a thread with a listening socket) that completes the upgrade
and then floods empty fragments, drips, sends undecodable or inconsistent audio, repeats
``idx``, breaks RFC 6455 framing, or never acknowledges a cancel, against every client adapter
(asyncio, trio, sync, anyio on asyncio and on trio: the transports' ``Harness``). Every failure
must be a typed :class:`KugelwireError`, in bounded time.

The message-completion deadline defaults to 30 s; these tests shorten it to 1.5 s by setting
the connections' keyword default (the same code path, a shorter clock).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kugelwire.errors import ConnectionClosedError, KugelwireError, ProtocolViolation
from kugelwire.protocol._events import AudioChunk, Interrupted, TurnClosed
from kugelwire.protocol._ws import FRAGMENT_COST, ClientConnection, ServerConnection
from kugelwire.server import BACKENDS
from kugelwire.synth import ToneEngine
from tests.faults._util import (
    RssPeak,
    client_frame,
    server_frames,
    text_frame,
    upgrade_request,
)
from tests.transports.conftest import ADAPTERS, Harness

pytestmark = pytest.mark.timeout(60)

KEY = "hostile-test-key"
SHORT = 1.5  # the message-completion deadline in these tests


@pytest.fixture
def short_message_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (ServerConnection, ClientConnection):
        defaults = dict(cls.__init__.__kwdefaults__ or {})
        defaults["message_timeout"] = SHORT
        monkeypatch.setattr(cls.__init__, "__kwdefaults__", defaults)


# -- helpers -----------------------------------------------------------------------------------
def _open(port: int, request: bytes | None = None) -> tuple[socket.socket, bytes]:
    """A raw socket past the upgrade (``request`` defaults to a valid one): (socket, rest)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request or upgrade_request("/ws/tts/stream", key=KEY))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def _read_until_closed(sock: socket.socket, rest: bytes, timeout: float) -> list[tuple[int, bytes]]:
    """Every frame the server sends until it closes the TCP connection (bounded)."""
    deadline = time.monotonic() + timeout
    data = rest
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    frames, _ = server_frames(data)
    return frames


def _close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    return None


class Bystander:
    """Another client's turns, one after the other in a thread, while an attack runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.turns: list[tuple[float, float]] = []  # (start, end) of each completed turn
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kugelwire.transports.sync import connect_stream

        try:
            with connect_stream(self.url, api_key=KEY, voice_id=1, connect_timeout=5) as stream:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    turn = stream.send_text("Hello there.", flush=True)
                    assert turn is not None
                    for _ in turn:
                        pass
                    self.latencies.append(time.monotonic() - t0)
                    self.turns.append((t0, time.monotonic()))
                    time.sleep(0.01)
        except BaseException as exc:  # reported by check()
            self.errors.append(exc)

    def __enter__(self) -> Bystander:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.latencies and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.hung = self._thread.is_alive()  # a turn that never ends: the server is wedged

    def check(self, start: float, end: float, bound: float = 1.0) -> None:
        """No error; every turn under ``bound`` seconds (the last one too: none hangs); at
        least one turn overlapped [start, end]."""
        assert not self.hung, "the bystander's turn did not end within 10 s of the attack"
        assert not self.errors, self.errors
        assert max(self.latencies) < bound, self.latencies
        assert any(a <= end and b >= start for a, b in self.turns), (start, end, self.turns)


#: Every way to run the server: the four backends (``run_in_thread(backend=...)``, in a thread
#: of this process) and the ASGI app under uvicorn.
SERVER_KINDS = [*BACKENDS, "uvicorn"]

#: Why the framing-level attacks skip uvicorn: under ASGI the HTTP upgrade, RFC 6455 framing and
#: keepalive are the ASGI server's own (uvicorn's websockets / wsproto implementation), not
#: kugelwire's core; the message-level attacks (fairness, floods of frames) run on it.
NOT_OUR_FRAMING = "under uvicorn the upgrade, the framing and keepalive are uvicorn's, not ours"


def serving(kind: str, **options: Any) -> Any:
    """A server of ``kind`` for the ``with`` block (url, port, stats() like a handle)."""
    from tests.server._servers import running

    return running(kind, **options)


@pytest.fixture(params=SERVER_KINDS)
def backend(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """How to start a server of one kind, per backend (the same sans-IO core decides)."""
    kind = request.param

    def start(**options: Any) -> Any:
        return serving(kind, **options)

    start.kind = kind  # type: ignore[attr-defined]
    return start


def framing_backend(backend: Callable[..., Any]) -> Callable[..., Any]:
    if backend.kind == "uvicorn":  # type: ignore[attr-defined]
        pytest.skip(NOT_OUR_FRAMING)
    return backend


@pytest.fixture
def server(backend: Callable[..., Any]) -> Iterator[Any]:
    with framing_backend(backend)(api_key=KEY, engine=ToneEngine(piece_ms=20)) as handle:
        yield handle


def _idle(server: Any) -> bool:
    """No connection left (and, where the handle reports them, no session, job or task)."""
    handle = getattr(server, "server", server)
    if hasattr(handle, "stats"):
        return bool(handle.stats() == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0})
    return bool(server.connections == 0)


# -- server role -------------------------------------------------------------------------------
def _flood_once(port: int) -> list[tuple[int, bytes]]:
    """One connection: a fragmented message of empty continuation frames until closed."""
    sock, rest = _open(port)
    first = bytearray(client_frame(b'{"text": "x"', opcode=0x1))
    first[0] &= 0x7F  # not FIN: a fragmented message begins
    empty = bytes([0x00, 0x80]) + b"\0\0\0\0"  # masked empty continuation, not FIN
    sock.sendall(bytes(first))
    sent = 0
    with contextlib.suppress(OSError):
        while sent < 4 * (2**20 // FRAGMENT_COST):
            sock.sendall(empty * 4096)
            sent += 4096
    frames = _read_until_closed(sock, rest, 10)
    sock.close()
    return frames


def test_server_empty_fragment_flood_is_bounded(server: Any) -> None:
    """Item 2: 6 M empty continuation frames grew the server by ~48 MB while the message
    counted 9 bytes. Now each fragment counts, so a flood ends with 1009 after about
    ``max_message_size / FRAGMENT_COST`` frames, with bounded memory, and others are served
    meanwhile."""
    with Bystander(server.url) as bystander:
        peak = RssPeak()  # the server runs in a thread of this process
        for _ in range(5):  # a flood can be shorter than the gap between two turns: again
            start = time.monotonic()
            frames = _flood_once(server.port)
            end = time.monotonic()
            assert _close_code(frames) == 1009
            time.sleep(0.3)  # the turn under way when the flood ended completes
            if any(a <= end and b >= start for a, b in bystander.turns):
                break
        growth = peak.stop()
    assert growth < 32 * 1024, f"RSS peaked {growth} KiB above its baseline"
    bystander.check(start, end)


def test_server_drip_into_a_frame_is_cut_at_the_message_deadline(
    backend: Callable[..., Any], short_message_timeout: None
) -> None:
    """Item 7: one byte at a time into a frame announced as 60,000 bytes kept the connection
    open indefinitely (each byte reset keepalive)."""
    with framing_backend(backend)(api_key=KEY, engine=ToneEngine(piece_ms=20),
                                  message_timeout=SHORT) as short, \
            Bystander(short.url) as bystander:
        sock, rest = _open(short.port)
        frame = client_frame(b"x" * 60_000)
        t0 = time.monotonic()
        sock.sendall(frame[:20])
        closed_at = None
        for i in range(20, 60):
            time.sleep(0.2)
            try:
                sock.sendall(frame[i : i + 1])
            except OSError:
                break
            sock.settimeout(0.001)
            with contextlib.suppress(TimeoutError, OSError):
                data = sock.recv(65536)
                rest += data
                if not data or _close_code(server_frames(rest)[0]) is not None:
                    closed_at = time.monotonic() - t0
                    break
        frames = _read_until_closed(sock, rest, 3)
        sock.close()
        end = time.monotonic()
    assert _close_code(frames) == 1008
    assert closed_at is None or closed_at < SHORT + 1.0
    bystander.check(t0, end)


def test_server_drip_does_not_postpone_the_ping(backend: Callable[..., Any]) -> None:
    """Item 7, keepalive: bytes that complete no frame are not traffic; a dripping peer that
    cannot answer a ping (it is inside a frame) is closed at ping_interval + ping_timeout."""
    with framing_backend(backend)(api_key=KEY, engine=ToneEngine(), ping_interval=1.0,
                                  ping_timeout=1.0) as pinging:
        sock, rest = _open(pinging.port)
        frame = client_frame(b"x" * 60_000)
        t0 = time.monotonic()
        sock.sendall(frame[:20])
        for i in range(20, 200):
            time.sleep(0.1)
            try:
                sock.sendall(frame[i : i + 1])
            except OSError:
                break
            if time.monotonic() - t0 > 6:
                break
        frames = _read_until_closed(sock, rest, 3)
        elapsed = time.monotonic() - t0
        sock.close()
    assert (0x9, b"\x00\x00\x00\x01") in frames  # pinged although bytes kept coming
    assert _close_code(frames) == 1011
    assert elapsed < 6


def _status(port: int, request: bytes) -> tuple[int, bytes]:
    """The HTTP status of ``request`` and every byte answered (a 101 is read up to its head
    plus what follows within 0.3 s: the connection stays open, nothing else is awaited)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
                if data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data:
                    sock.settimeout(0.3)
    return int(data.split(b" ", 2)[1]), data


def _upgrade(*lines: str, version: str = "1.1", key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
             body: bytes = b"") -> bytes:
    head = [f"GET /ws/tts/stream?api_key={KEY} HTTP/{version}", "Host: 127.0.0.1",
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    if key is not None:
        head.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join([*head, *lines]) + "\r\n\r\n").encode("latin-1") + body


def test_server_handshake_is_strict(server: Any) -> None:
    """Item 9: a 100 KB head in one segment got 101; empty, ``!!!!`` and 4 KB keys got 101;
    HTTP/1.0 was accepted; an upgrade with Content-Length and Transfer-Encoding was accepted
    and its body executed as WebSocket frames."""
    assert _status(server.port, _upgrade("X-Pad: " + "a" * 100_000))[0] == 431
    for key in ("", "!!!!", "A" * 4096):
        assert _status(server.port, _upgrade(key=key))[0] == 400, key
    assert _status(server.port, _upgrade(version="1.0"))[0] == 400
    body = text_frame({"text": "Injected text.", "voice_id": 1, "flush": True})
    for lines in ((f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"),
                  (f"Content-Length: {len(body)}",)):
        status, data = _status(server.port, _upgrade(*lines, body=body))
        assert status == 400
        assert b"audio" not in data and b"generation_started" not in data
    assert _status(server.port, _upgrade())[0] == 101  # the valid upgrade still works
    deadline = time.monotonic() + 5
    while not _idle(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _idle(server)


# -- client role: a hostile server ------------------------------------------------------------
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Handler = Callable[[socket.socket, bytes], None]


class HostileServer:
    """Accepts connections, completes the upgrade, then runs ``handler(sock, rest)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                self._socks.append(sock)
                t = threading.Thread(target=self._one, args=(sock,), daemon=True)
                t.start()
                self._threads.append(t)

    def _one(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError), sock:
            sock.settimeout(20)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)sec-websocket-key: *([^\r\n]+)", head)
            assert m is not None
            accept = base64.b64encode(hashlib.sha1(m.group(1).strip() + _GUID).digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.handler(sock, rest)

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:  # wake handlers blocked in recv (the test is over)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)


def sframe(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """An unmasked server frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def jframe(obj: dict[str, Any]) -> bytes:
    return sframe(json.dumps(obj).encode())


def audio(idx: int, samples: int = 480, **extra: Any) -> dict[str, Any]:
    pcm = b"\x01\x00" * samples
    return {"audio": base64.b64encode(pcm).decode(), "enc": "pcm_s16le", "idx": idx,
            "sr": 24000, "samples": samples, "chunk_id": 0, **extra}


def turn_frames(n_audio: int = 2) -> bytes:
    secs = n_audio * 480 / 24000
    out = jframe({"generation_started": True, "chunk_id": 0, "text": "Hi."})
    out += b"".join(jframe(audio(i)) for i in range(n_audio))
    out += jframe({"chunk_complete": True, "chunk_id": 0, "audio_seconds": secs, "gen_ms": 1.0})
    out += jframe({"final": True, "total_audio_seconds": secs})
    out += jframe({"session_closed": True, "total_audio_seconds": secs, "total_text_chunks": 1,
                   "total_audio_chunks": n_audio})
    return out


def _client_messages(sock: socket.socket, buf: bytearray) -> list[dict[str, Any]]:
    """Read masked client frames until at least one complete one arrived; ``OSError`` at EOF,
    a close frame or ``close_socket`` (the handler returns and its socket is closed)."""
    out: list[dict[str, Any]] = []
    while not out:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("EOF")
        buf += chunk
        while len(buf) >= 6:
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                n, head = struct.unpack("!H", bytes(buf[2:4]))[0], 4
            elif n == 127:
                n, head = struct.unpack("!Q", bytes(buf[2:10]))[0], 10
            if len(buf) < head + 4 + n:
                break
            mask = buf[head : head + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[head + 4 : head + 4 + n]))
            opcode = buf[0] & 0x0F
            del buf[: head + 4 + n]
            if opcode == 0x1:
                out.append(json.loads(payload))
                if out[-1].get("close_socket"):  # ends the connection, as the service does
                    raise OSError("closed")
            elif opcode == 0x8:
                raise OSError("closed")
    return out


def _wait_for_turn_text(sock: socket.socket, buf: bytearray) -> dict[str, Any]:
    while True:
        for msg in _client_messages(sock, buf):
            if msg.get("flush") or msg.get("cancel"):
                return msg


@contextlib.contextmanager
def hostile(handler: Handler) -> Iterator[HostileServer]:
    srv = HostileServer(handler)
    try:
        yield srv
    finally:
        srv.close()


def _linger(sock: socket.socket, buf: bytearray) -> None:
    """Stay connected (reading and discarding) until the client closes or sends its close
    frame, then return (the handler's socket is closed: the client sees EOF at once)."""
    while True:
        _client_messages(sock, buf)


@pytest.fixture(params=ADAPTERS)
def h(request: pytest.FixtureRequest) -> Harness:
    """One client adapter: asyncio, trio, sync, anyio on asyncio and anyio on trio."""
    return Harness(request.param)


def run_client(h: Harness, url: str, body: Callable[[Any], Any], **options: Any) -> Any:
    """Run ``await body(stream)`` on one adapter's stream client (bounded in time)."""
    options.setdefault("voice_id", 1)
    options.setdefault("connect_timeout", 5)

    async def scenario() -> Any:
        async with await h.connect_stream(url, api_key=KEY, **options) as stream:
            return await body(stream)

    return h.run(scenario, timeout=30)


async def consume(stream: Any) -> list[Any]:
    """A body that sends one turn and collects its events (the error, if any, is raised)."""
    turn = await stream.send_text("Hi.", flush=True)
    return [e async for e in turn]


def test_client_empty_fragment_flood_is_bounded(h: Harness) -> None:
    def handler(sock: socket.socket, rest: bytes) -> None:
        _wait_for_turn_text(sock, bytearray(rest))
        sock.sendall(sframe(b'{"audio": ', fin=False))
        empty = sframe(b"", opcode=0x0, fin=False)
        for _ in range(2000):
            sock.sendall(empty * 1000)

    with hostile(handler) as srv:
        peak = RssPeak()
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosedError) as info:
            run_client(h, srv.url, consume, max_message_size=2**20)
        assert info.value.code == 1009
        assert time.monotonic() - t0 < 10
        assert peak.stop() < 32 * 1024


def test_client_drip_after_the_upgrade_ends_with_a_typed_error(
    h: Harness, short_message_timeout: None
) -> None:
    """Item 7: the client waited 73 s on a server dripping after the upgrade."""
    def handler(sock: socket.socket, rest: bytes) -> None:
        _wait_for_turn_text(sock, bytearray(rest))
        frame = sframe(b"x" * 60_000)
        for i in range(60):
            sock.sendall(frame[i : i + 1])
            time.sleep(0.2)

    with hostile(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(ProtocolViolation) as info:
            run_client(h, srv.url, consume, ping_interval=None)
        assert "not completed" in info.value.message
        assert time.monotonic() - t0 < SHORT + 2.0


@pytest.mark.parametrize(
    "bad",
    [
        {"audio": "!!!!not base64!!!!"},  # undecodable: used to fail later in .data
        {"samples": 10**15},  # used to be accepted (next offset_s 4e10 s)
        {"samples": 481},
    ],
    ids=["base64", "samples-huge", "samples-off-by-one"],
)
def test_client_invalid_audio_is_a_protocol_violation(h: Harness, bad: dict[str, Any]) -> None:
    def handler(sock: socket.socket, rest: bytes) -> None:
        buf = bytearray(rest)
        _wait_for_turn_text(sock, buf)
        sock.sendall(jframe({"generation_started": True, "chunk_id": 0, "text": "Hi."}))
        sock.sendall(jframe(audio(0)) + jframe({**audio(1), **bad}))
        _linger(sock, buf)

    with hostile(handler) as srv:
        got: list[Any] = []

        async def body(stream: Any) -> None:
            async for event in await stream.send_text("Hi.", flush=True):
                got.append(event)

        with pytest.raises(ProtocolViolation) as info:
            run_client(h, srv.url, body)
        assert isinstance(info.value, KugelwireError)
        chunks = [e for e in got if isinstance(e, AudioChunk)]
        assert [c.frame.idx for c in chunks] == [0]  # the bad frame never became an event
        assert all(len(c.pcm16()) == 960 for c in chunks)


def test_client_repeated_idx_is_not_played_twice(h: Harness) -> None:
    def handler(sock: socket.socket, rest: bytes) -> None:
        buf = bytearray(rest)
        _wait_for_turn_text(sock, buf)
        secs = 2 * 480 / 24000
        sock.sendall(
            jframe({"generation_started": True, "chunk_id": 0, "text": "Hi."})
            + jframe(audio(0)) + jframe(audio(0)) + jframe(audio(1)) + jframe(audio(1))
            + jframe({"final": True, "total_audio_seconds": secs})
            + jframe({"session_closed": True, "total_audio_seconds": secs})
        )
        _linger(sock, buf)

    with hostile(handler) as srv:
        events = run_client(h, srv.url, consume)
    assert [e.frame.idx for e in events if isinstance(e, AudioChunk)] == [0, 1]
    assert isinstance(events[-1], TurnClosed)


@pytest.mark.parametrize(
    "data",
    [sframe(b"{}", opcode=0x3), bytes([0xC1, 0x00]), sframe(b"x", opcode=0x0),
     bytes([0x81, 0x82]) + b"\0\0\0\0{}"],
    ids=["reserved-opcode", "rsv1", "orphan-continuation", "masked"],
)
def test_client_framing_violation_is_a_protocol_violation(h: Harness, data: bytes) -> None:
    """Item 10: framing violations surfaced as ConnectionClosedError."""
    def handler(sock: socket.socket, rest: bytes) -> None:
        buf = bytearray(rest)
        _wait_for_turn_text(sock, buf)
        sock.sendall(data)
        _linger(sock, buf)

    with hostile(handler) as srv, pytest.raises(ProtocolViolation):
        run_client(h, srv.url, consume)


def test_client_unacknowledged_cancel_does_not_wedge_later_turns(h: Harness) -> None:
    """Item 6: after the cancel timeout every later turn hung (all its output dropped)."""
    def handler(sock: socket.socket, rest: bytes) -> None:
        buf = bytearray(rest)
        while True:
            msg = _wait_for_turn_text(sock, buf)
            if msg.get("flush"):
                sock.sendall(turn_frames())
            # a cancel is never answered

    async def body(stream: Any) -> tuple[list[Any], list[float]]:
        first = await stream.send_text("Barge in on this.")
        await stream.cancel()
        ended = [e async for e in first]
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            events = [e async for e in await stream.send_text("Later turn.", flush=True)]
            times.append(time.monotonic() - t0)
            assert isinstance(events[-1], TurnClosed), events
        return ended, times

    with hostile(handler) as srv:
        ended, times = run_client(h, srv.url, body, cancel_timeout=0.5)
    assert isinstance(ended[-1], Interrupted) and not ended[-1].acknowledged
    assert max(times) < 1.0, times
