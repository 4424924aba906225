"""Hardening rules of the byte-level connections (both roles), sans-IO with explicit ``now``.

* fragment accounting: every fragment but the last costs ``FRAGMENT_COST`` bytes on top of its
  payload towards ``max_message_size``, so empty continuation frames cannot grow a message
  (or the connection's memory) without bound; this holds on the client's fast path too;
* a message (or frame) must be complete ``message_timeout`` seconds after its first byte, and
  bytes that complete no frame never postpone the keepalive ping;
* the upgrade: the head limit counts complete heads, ``Sec-WebSocket-Key`` must be the base64
  of 16 bytes, HTTP/1.0 is refused, and a request body is refused rather than read as frames;
* framing violations from the server reach the client as a ``ConnectionClosed`` carrying a
  ``RemoteProtocolError`` (transports raise ``ProtocolViolation`` for it).
"""

from __future__ import annotations

import base64
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.protocol._errors import RemoteProtocolError
from kugelwire.protocol._ws import (
    FRAGMENT_COST,
    MESSAGE_TIMEOUT,
    ConnectionClosed,
    ConnectionState,
    Rejected,
    ServerConnection,
)
from tests.protocol.test_ws import (
    FakeSession,
    Router,
    close_payload,
    connect,
    frame,
    parse_frames,
    raw_server,
)

# -- item 2: fragments --------------------------------------------------------------------------


def _closed(conn: ServerConnection) -> list[ConnectionClosed]:
    return [e for e in conn.events() if isinstance(e, ConnectionClosed)]


def test_empty_continuation_frames_are_bounded_on_the_server() -> None:
    """6 M empty fragments used to be kept (48 MB) while the message counted 9 bytes."""
    limit = 2**20
    server, router = raw_server(max_message_size=limit)
    server.receive_data(frame(0x1, b'{"text":', fin=False), 0.0)
    empty = frame(0x0, b"", fin=False)
    bound = limit // FRAGMENT_COST  # the fragments it takes to pass the limit
    tracemalloc.start()
    try:
        sent = 0
        while server.state is ConnectionState.OPEN and sent < 4 * bound:
            server.receive_data(empty * 1000, 0.0)
            sent += 1000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert server.state is ConnectionState.CLOSED
    assert sent <= bound + 1000
    assert parse_frames(server.data_to_send())[-1][1][:2] == struct.pack("!H", 1009)
    assert router.sessions[0].received == []
    assert peak < 4 * 2**20, peak  # not one list entry per fragment


def test_empty_fragments_are_bounded_on_the_client() -> None:
    client, _server, csess, _router = connect(client_kw={"max_message_size": 4096})
    client.receive_data(frame(0x1, b"{", fin=False, mask=False), 1.0)
    empty = frame(0x0, b"", fin=False, mask=False)
    for _ in range(4096 // FRAGMENT_COST + 1):
        client.receive_data(empty, 1.0)
        if client.state is ConnectionState.CLOSED:
            break
    assert client.state is ConnectionState.CLOSED
    assert csess.lost[0][0] == 1009 and csess.received == []


def test_fragments_after_fast_path_messages_are_counted() -> None:
    """Single-frame messages take the client's fast path; a fragmented one right after them
    in the same read is still counted fragment by fragment."""
    client, _server, csess, _router = connect(client_kw={"max_message_size": 1000})
    data = frame(0x1, b'{"a":1}', mask=False) * 3 + frame(0x1, b"{", fin=False, mask=False)
    data += frame(0x0, b"", fin=False, mask=False) * 20
    client.receive_data(data, 1.0)
    assert csess.received == ['{"a":1}'] * 3
    assert client.state is ConnectionState.CLOSED
    assert csess.lost[0][0] == 1009


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=12),
    empties=st.lists(st.integers(0, 12), max_size=6),
    limit=st.integers(1, 1200),
)
def test_random_fragmentation_delivers_or_fails_1009_at_the_bound(
    text: str, cuts: list[int], empties: list[int], limit: int
) -> None:
    """Any fragmentation of a message (empty fragments included) delivers the same text, or
    fails with 1009 exactly when payload + FRAGMENT_COST x (fragments - 1) passes the limit."""
    payload = text.encode("utf-8")
    points = sorted({min(c, len(payload)) for c in cuts})
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    for e in empties:
        pieces.insert(min(e, len(pieces)), b"")
    # UTF-8 may only be split where wsproto's incremental decoder accepts it: always fine
    server, router = raw_server(max_message_size=limit)
    data = b"".join(
        frame(0x1 if i == 0 else 0x0, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)
    )
    server.receive_data(data, 0.0)
    counted = len(payload) + FRAGMENT_COST * (len(pieces) - 1)
    if counted <= limit:
        assert router.sessions[0].received == [text]
        assert server.state is ConnectionState.OPEN
    else:
        assert router.sessions[0].received == []
        assert router.sessions[0].lost[0][0] == 1009


# -- item 7: message deadline, keepalive ----------------------------------------------------------


def test_server_message_never_finished_is_failed_at_the_deadline() -> None:
    server, router = raw_server(keepalive_interval=None)
    head = frame(0x1, b"x" * 60_000)
    server.receive_data(head[:20], 0.0)
    assert server.next_deadline() == MESSAGE_TIMEOUT
    for i in range(1, 30):  # one byte every second: the deadline does not move
        server.receive_data(head[19 + i : 20 + i], float(i))
        assert server.next_deadline() == MESSAGE_TIMEOUT
    server.handle_timeout(MESSAGE_TIMEOUT)
    assert server.state is ConnectionState.CLOSED
    reason = f"message not completed within {MESSAGE_TIMEOUT:g} s"
    assert parse_frames(server.data_to_send()) == [(0x8, close_payload(1008, reason.encode()))]
    assert router.sessions[0].lost == [(1008, reason)]


def test_deadline_restarts_for_each_message() -> None:
    """A steady stream of complete messages, each read ending mid-frame, is never cut."""
    server, router = raw_server(keepalive_interval=None, message_timeout=5.0)
    stream = b"".join(frame(0x1, b'{"n":%d}' % i) for i in range(200))
    step = 7
    for i in range(0, len(stream), step):
        now = i / step  # one read per second, about 7 bytes each
        server.handle_timeout(now)
        server.receive_data(stream[i : i + step], now)
    assert server.state is ConnectionState.OPEN
    assert len(router.sessions[0].received) == 200
    assert server.next_deadline() is None


def test_drip_inside_a_frame_does_not_postpone_the_ping() -> None:
    """The drip used to reset keepalive on every byte: the ping never went out."""
    server, router = raw_server(keepalive_interval=20.0, ping_timeout=20.0, message_timeout=None)
    head = frame(0x1, b"x" * 60_000)
    server.receive_data(head[:10], 1.0)
    now = 1.0
    while server.state is ConnectionState.OPEN and now < 200:
        now += 15.0
        server.handle_timeout(now)
        server.receive_data(head[10:11], now)  # one more byte every 15 s, never a pong
    assert server.state is ConnectionState.CLOSED
    assert router.sessions[0].lost == [(1011, "keepalive ping timeout")]
    # the ping was due 20 s after the upgrade (sent at the 31 s check), its pong 20 s later
    # (noticed at the 61 s check); the old code postponed the ping on every byte, forever
    assert now == 61.0


def test_client_message_deadline_and_protocol_error() -> None:
    client, _server, csess, _router = connect(client_kw={"message_timeout": 10.0})
    list(client.events())
    client.receive_data(frame(0x1, b"y" * 60_000, mask=False)[:100], 1.0)
    assert client.next_deadline() == 11.0
    client.handle_timeout(11.0)
    closed = [e for e in client.events() if isinstance(e, ConnectionClosed)]
    assert closed[0].code == 1008 and isinstance(closed[0].error, RemoteProtocolError)
    assert csess.lost[0][0] == 1008


def test_message_timeout_none_disables_it() -> None:
    server, _ = raw_server(keepalive_interval=None, message_timeout=None)
    server.receive_data(frame(0x1, b"x" * 1000)[:10], 0.0)
    assert server.next_deadline() is None
    with pytest.raises(ValueError):
        ServerConnection(Router(), now=0.0, message_timeout=0)


# -- item 9: handshake ---------------------------------------------------------------------------


def _request(*lines: str, version: str = "1.1", key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
             body: bytes = b"") -> bytes:
    head = [
        f"GET /ws/tts/stream HTTP/{version}",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key is not None:
        head.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join([*head, *lines]) + "\r\n\r\n").encode("latin-1") + body


def _answer(data: bytes) -> tuple[int, ServerConnection, Router]:
    router = Router()
    server = ServerConnection(router, now=0.0)
    server.receive_data(data, 0.0)
    out = server.data_to_send()
    return int(out.split(b" ", 2)[1]), server, router


def test_complete_head_over_the_limit_is_431() -> None:
    """A 100 KB head arriving in one segment used to be accepted (101)."""
    status, server, router = _answer(_request("X-Pad: " + "a" * 100_000))
    assert status == 431 and server.state is ConnectionState.CLOSED and not router.sessions
    status, _, _ = _answer(_request("X-Pad: " + "a" * 15_000))
    assert status == 101


@pytest.mark.parametrize(
    "key",
    ["", "!!!!", "A" * 4096, "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=",
     "dGhlIHNhbXBsZSBub25jZSE=", "dGhlIHNhbXBsZSBub25jZSEh", None],
)
def test_sec_websocket_key_must_be_base64_of_16_bytes(key: str | None) -> None:
    status, server, router = _answer(_request(key=key))
    assert status == 400 and server.state is ConnectionState.CLOSED and not router.sessions


def test_two_keys_are_refused() -> None:
    status, _, _ = _answer(_request("Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16).decode()))
    assert status == 400


def test_http10_upgrade_is_refused() -> None:
    status, server, _ = _answer(_request(version="1.0"))
    assert status == 400 and server.state is ConnectionState.CLOSED


@pytest.mark.parametrize(
    "lines",
    [("Content-Length: 6", "Transfer-Encoding: chunked"), ("Content-Length: 6",),
     ("Transfer-Encoding: chunked",)],
)
def test_request_body_is_refused_not_read_as_frames(lines: tuple[str, ...]) -> None:
    """The body of such an upgrade used to be executed as WebSocket frames."""
    body = frame(0x1, b'{"text": "injected", "flush": true}')
    status, server, router = _answer(_request(*lines, body=body))
    assert status == 400 and server.state is ConnectionState.CLOSED
    assert not router.sessions
    assert [e.status_code for e in server.events() if isinstance(e, Rejected)] == [400]


def test_content_length_zero_is_fine() -> None:
    status, _, _ = _answer(_request("Content-Length: 0"))
    assert status == 101


# -- item 10: framing violations are protocol errors on the client --------------------------------


@pytest.mark.parametrize(
    "data",
    [
        frame(0x1, b"{}", mask=True),  # a masked server frame
        bytes([0x83, 0x00]),  # reserved opcode
        bytes([0xC1, 0x00]),  # RSV1 without an extension
        frame(0x0, b"x", mask=False),  # continuation with nothing to continue
        frame(0x1, b"\xff\xfe", mask=False),  # invalid UTF-8
        frame(0x2, b"\x00", mask=False),  # binary
    ],
)
def test_framing_violation_carries_a_remote_protocol_error(data: bytes) -> None:
    client, _server, csess, _router = connect()
    list(client.events())
    client.receive_data(data, 1.0)
    closed = [e for e in client.events() if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and closed[0].code in (1002, 1003, 1007)
    assert isinstance(closed[0].error, RemoteProtocolError), closed[0]
    assert csess.lost


def test_fake_session_is_a_message_session() -> None:
    assert FakeSession().received == []
