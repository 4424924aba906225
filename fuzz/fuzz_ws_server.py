"""Byte-level fuzzing of :class:`kugelwire.protocol.ServerConnection` (HTTP handshake + frames).

    python fuzz/fuzz_ws_server.py -max_total_time=120 -rss_limit_mb=2048 -timeout=10

The input is what a client writes to the socket, cut into reads; its first byte picks options:
bit 0 prepends a valid upgrade request (so mutations reach the frame parser quickly), bit 1
requires an API key (``auth_failure`` "http" or "close" by bit 2), bit 3 enables keepalive
pings. Timers run between reads and EOF comes last.

Property: ``receive_data`` / ``handle_timeout`` never raise; the events are Accepted / Rejected
/ ConnectionClosed, with exactly one ConnectionClosed, last; a close code of ours is one of the
documented ones (:data:`OUR_CODES`); a peer's is a valid close code; work and output per input
are bounded (:class:`Budget`). ``tests/test_fuzz_ws.py`` runs :func:`one_input` under
hypothesis in CI.
"""

from __future__ import annotations

import time

from kugelwire.protocol import (
    Accepted,
    ConnectionClosed,
    ConnectionState,
    MultiServerSession,
    Rejected,
    ServerConnection,
    StreamServerSession,
    TTSServerSession,
)
from kugelwire.protocol._ws import MessageSession

#: Close codes this side may choose: normal, protocol error, binary frame, invalid UTF-8,
#: message not completed in time, message too big, keepalive timeout, restart, unauthorized
#: (accept-and-close).
OUR_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 4001})

UPGRADE = (
    b"GET /ws/tts/stream?api_key=k HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

SEEDS = [
    bytes([0]) + UPGRADE,
    bytes([1]) + b"\x81\x85\x00\x00\x00\x00{\"a\"}",
    bytes([1]) + b"\x81\x9a\x01\x02\x03\x04" + bytes(b ^ k for b, k in zip(
        b'{"text": "Hello. ", "flush": true}'[:26], b"\x01\x02\x03\x04" * 7, strict=False)),
    bytes([1]) + b"\x89\x80\x00\x00\x00\x00\x88\x82\x00\x00\x00\x00\x03\xe8",
    bytes([3]) + UPGRADE.replace(b"?api_key=k", b""),
    bytes([0]) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes([1]) + b"\x82\x80\x00\x00\x00\x00",
    bytes([9]) + b"\x01\x81\x00\x00\x00\x00a\x80\x81\x00\x00\x00\x00b",
]


def _route(path: str) -> MessageSession | None:
    if path == "/ws/tts/stream":
        return StreamServerSession()
    if path == "/ws/tts/multi":
        return MultiServerSession()
    if path == "/ws/tts":
        return TTSServerSession()
    return None


def _reads(data: bytes) -> list[bytes]:
    """Cut ``data`` into socket reads; sizes come from the bytes themselves (deterministic)."""
    reads: list[bytes] = []
    i = 0
    while i < len(data):
        size = 1 + (data[i] * 7) % 97
        reads.append(data[i : i + size])
        i += size
    return reads


def one_input(data: bytes) -> None:
    """Feed one client byte stream to a fresh server connection; check the property."""
    if not data:
        return
    flags, body = data[0], data[1:]
    t0 = time.perf_counter()
    if flags & 1:
        body = UPGRADE + body
    conn = ServerConnection(
        _route,
        api_key="k" if flags & 2 else None,
        now=0.0,
        auth_failure="close" if flags & 4 else "http",
        keepalive_interval=1.0 if flags & 8 else None,
        ping_timeout=1.0,
        max_message_size=4096,
        max_request_size=4096,
    )
    out = 0
    events: list[object] = []
    now = 0.0
    for chunk in _reads(body):
        conn.receive_data(chunk, now)
        out += len(conn.data_to_send())
        events.extend(conn.events())
        now += 0.3
        conn.handle_timeout(now)
        out += len(conn.data_to_send())
        events.extend(conn.events())
    conn.receive_data(b"", now)  # EOF
    for step in (1.0, 10.0, 60.0):
        deadline = conn.next_deadline()
        conn.handle_timeout(now + step if deadline is None else max(deadline, now + step))
    out += len(conn.data_to_send())
    events.extend(conn.events())

    assert conn.state is ConnectionState.CLOSED
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and events[-1] is closed[0], events
    assert all(isinstance(e, Accepted | Rejected | ConnectionClosed) for e in events), events
    code = closed[0].code
    if code is not None:
        if closed[0].by_peer:
            assert 1000 <= code <= 4999, code
        else:
            assert code in OUR_CODES, closed[0]
    assert out <= 64 * 1024 + 4 * len(data), out
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0 + 50e-6 * len(data), elapsed


def main() -> None:
    from _harness import run  # fuzz/ is on sys.path when this file runs as a script

    run("ws_server", SEEDS, one_input)


if __name__ == "__main__":
    main()
