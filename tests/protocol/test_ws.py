"""Byte-level WebSocket connections (kugelwire.protocol._ws), pumped in memory."""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._errors import RemoteProtocolError
from kugelwire.protocol._ws import (
    FRAGMENT_COST,
    Accepted,
    ClientConnection,
    Connected,
    ConnectionClosed,
    ConnectionState,
    HandshakeRejected,
    MessageSession,
    Rejected,
    ServerConnection,
    build_url,
)

# -- fakes and helpers -----------------------------------------------------------------------------


class FakeSession:
    """Records what it receives; optionally echoes; raises on ``"bad"``."""

    def __init__(self, *, echo: bool = False, outbox: list[str] | None = None) -> None:
        self.echo = echo
        self.received: list[str] = []
        self.outbox: list[str] = list(outbox or [])
        self.close_code: int | None = None
        self.lost: list[tuple[int | None, str]] = []
        self.deadline: float | None = None
        self.timeouts: list[float] = []

    def receive_message(self, text: str, now: float) -> None:
        self.received.append(text)
        if text == "bad":
            raise RemoteProtocolError("bad input", error_code="VALIDATION_ERROR", context_id="c1")
        if text == "close please":
            self.outbox.append("bye")
            self.close_code = 1000
        elif self.echo:
            self.outbox.append("echo:" + text)

    def messages_to_send(self) -> list[str]:
        out, self.outbox = self.outbox, []
        return out

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timeout(self, now: float) -> None:
        self.timeouts.append(now)
        self.deadline = None
        self.outbox.append(f"tick:{now}")

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self.lost.append((code, reason))


def _check_protocol(session: FakeSession) -> MessageSession:
    return session  # mypy: FakeSession satisfies MessageSession


def pump(client: ClientConnection, server: ServerConnection, now: float) -> None:
    """Move bytes both ways until neither side has anything more to say."""
    for _ in range(100):
        a = client.data_to_send()
        if a and server.state is not ConnectionState.CLOSED:
            server.receive_data(a, now)
        b = server.data_to_send()
        if b and client.state is not ConnectionState.CLOSED:
            client.receive_data(b, now)
        if not a and not b:
            return
    raise AssertionError("pump did not settle")


class Router:
    def __init__(self, **session_kw: Any) -> None:
        self.sessions: list[FakeSession] = []
        self.session_kw = session_kw

    def __call__(self, path: str) -> FakeSession | None:
        if path not in ("/ws/tts", "/ws/tts/stream", "/ws/tts/multi"):
            return None
        session = FakeSession(echo=True, **self.session_kw)
        self.sessions.append(session)
        return session


def connect(
    endpoint: str = "/ws/tts/stream",
    *,
    server_key: str | None = None,
    client_key: str | None = None,
    auth: Any = "query",
    params: dict[str, str] | None = None,
    client_kw: dict[str, Any] | None = None,
    server_kw: dict[str, Any] | None = None,
    router: Router | None = None,
) -> tuple[ClientConnection, ServerConnection, FakeSession, Router]:
    router = router or Router()
    csess = FakeSession()
    url = build_url("http://localhost:8080", endpoint, params=params)
    client = ClientConnection(
        csess, url, api_key=client_key, auth=auth, now=0.0, **(client_kw or {})
    )
    server = ServerConnection(router, api_key=server_key, now=0.0, **(server_kw or {}))
    pump(client, server, 0.0)
    return client, server, csess, router


KEY = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One raw WebSocket frame (masked, as a client sends them, unless ``mask=False``)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        head += KEY
        payload = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    return head + payload


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split frames into ``(opcode, payload)``: unmasked (server→client) or masked (a client's,
    unmasked here with the frame's own key)."""
    out = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        masked = data[i + 1] & 0x80
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        key = data[i : i + 4] if masked else b""
        i += len(key)
        payload = data[i : i + n]
        if key:
            payload = bytes(b ^ key[j % 4] for j, b in enumerate(payload))
        out.append((opcode, payload))
        i += n
    return out


RAW_REQUEST = (
    b"GET /ws/tts/stream?api_key=k HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def raw_server(**kw: Any) -> tuple[ServerConnection, Router]:
    router = Router()
    server = ServerConnection(router, now=0.0, **kw)
    server.receive_data(RAW_REQUEST, 0.0)
    head = server.data_to_send()
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert server.state is ConnectionState.OPEN
    return server, router


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# -- URLs ------------------------------------------------------------------------------------------


def test_build_url() -> None:
    assert build_url("https://api.kugelaudio.com", "/ws/tts/stream") == (
        "wss://api.kugelaudio.com/ws/tts/stream?sdk=kugelwire"
    )
    assert build_url("http://localhost:8000/", "/ws/tts", api_key="k", params={"a": "1"}) == (
        "ws://localhost:8000/ws/tts?api_key=k&a=1&sdk=kugelwire"
    )
    url = build_url("wss://h/prefix", "/ws/tts/multi", api_key="a&b c=d+e/f ü")
    assert url == "wss://h/prefix/ws/tts/multi?api_key=a%26b%20c%3Dd%2Be%2Ff%20%C3%BC&sdk=kugelwire"
    with pytest.raises(ValueError):
        build_url("ftp://h", "/ws/tts")
    with pytest.raises(ValueError):
        build_url("https://h", "/ws/nope")


def test_client_request_head_and_address() -> None:
    conn = ClientConnection(
        FakeSession(), "https://api.example.com/ws/tts", api_key="sekret", now=0.0
    )
    assert conn.address == ("api.example.com", 443) and conn.secure
    head = conn.data_to_send()
    assert head.startswith(b"GET /ws/tts?api_key=sekret HTTP/1.1\r\n")
    assert b"host: api.example.com\r\n" in head.lower()
    conn = ClientConnection(
        FakeSession(), "ws://[::1]:9000/ws/tts", api_key="sekret", auth="bearer", now=0.0
    )
    assert conn.address == ("::1", 9000) and not conn.secure
    head = conn.data_to_send()
    assert head.startswith(b"GET /ws/tts HTTP/1.1\r\n")
    assert b"host: [::1]:9000\r\n" in head.lower()
    assert b"authorization: Bearer sekret\r\n" in head
    assert "sekret" not in repr(conn)


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_and_echo() -> None:
    client, server, csess, router = connect()
    assert client.state is ConnectionState.OPEN and server.state is ConnectionState.OPEN
    (connected,) = list(client.events())
    assert isinstance(connected, Connected)
    assert (b"x-kugelaudio-ai-generated", b"true") in connected.headers
    (accepted,) = list(server.events())
    assert accepted == Accepted("/ws/tts/stream", router.sessions[0])
    assert server.session is router.sessions[0]
    csess.outbox.append('{"text": "hi"}')
    pump(client, server, 1.0)
    assert router.sessions[0].received == ['{"text": "hi"}']
    assert csess.received == ['echo:{"text": "hi"}']


def test_messages_queued_before_open_are_sent_after_handshake() -> None:
    router = Router()
    csess = FakeSession(outbox=["one", "two"])
    client = ClientConnection(csess, "ws://h/ws/tts/stream", now=0.0)
    server = ServerConnection(router, now=0.0)
    head = client.data_to_send()
    assert b"one" not in head  # held back until the handshake completes
    server.receive_data(head, 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    pump(client, server, 0.0)
    assert router.sessions[0].received == ["one", "two"]
    assert csess.received == ["echo:one", "echo:two"]


def test_initial_message_and_frames_in_the_same_chunk_as_the_101() -> None:
    _client, _server, csess, router = connect(
        "/ws/tts", params={"initial_message": '{"text": "Hello & bye"}'}
    )
    assert router.sessions[0].received == ['{"text": "Hello & bye"}']
    # the echo travelled in the same chunk as the 101 and was not lost
    assert csess.received == ['echo:{"text": "Hello & bye"}']


def test_initial_message_ignored_off_tts() -> None:
    _, _, _, router = connect("/ws/tts/stream", params={"initial_message": '{"text": "x"}'})
    assert router.sessions[0].received == []


@pytest.mark.parametrize("auth", ["query", "bearer"])
def test_auth_ok_with_awkward_key(auth: str) -> None:
    key = "a&b c=d+e/f%20ü?#"
    client, server, _, _router = connect(server_key=key, client_key=key, auth=auth)
    assert client.state is ConnectionState.OPEN
    assert isinstance(next(server.events()), Accepted)
    for event in server.events():
        assert key not in repr(event)
    assert key not in repr(server)


def test_query_key_with_literal_plus_is_tolerated() -> None:
    router = Router()
    server = ServerConnection(router, api_key="a+b", now=0.0)
    server.receive_data(RAW_REQUEST.replace(b"api_key=k", b"api_key=a+b"), 0.0)
    assert server.state is ConnectionState.OPEN


@pytest.mark.parametrize("client_key", [None, "wrong"])
def test_bad_key_is_rejected_with_401(client_key: str | None) -> None:
    client, server, csess, router = connect(server_key="right", client_key=client_key)
    assert router.sessions == []
    events = list(client.events())
    assert isinstance(events[0], HandshakeRejected)
    rejected = events[0]
    assert rejected.status_code == 401 and rejected.kind == "auth"
    assert rejected.error_code == "UNAUTHORIZED" and rejected.message == "Unauthorized"
    assert json.loads(rejected.body) == {
        "error": "Unauthorized",
        "error_code": "UNAUTHORIZED",
        "code": 401,
    }
    assert events[1] == ConnectionClosed(None, "handshake rejected: HTTP 401", True)
    assert client.state is ConnectionState.CLOSED and server.state is ConnectionState.CLOSED
    assert csess.lost == [(None, "handshake rejected: HTTP 401")]
    sevents = list(server.events())
    assert sevents[0] == Rejected(401, "/ws/tts/stream", "unauthorized")
    assert isinstance(sevents[1], ConnectionClosed)


def test_bad_key_accept_and_close_4001() -> None:
    client, server, csess, router = connect(
        server_key="right", client_key="wrong", server_kw={"auth_failure": "close"}
    )
    assert router.sessions == []
    assert csess.received == [
        '{"error":"Unauthorized","error_code":"UNAUTHORIZED","code":401,'
        f'"request_id":"{server.request_id}"}}'
    ]
    events = list(client.events())
    assert isinstance(events[0], Connected)
    assert events[1] == ConnectionClosed(4001, "Unauthorized", True)
    assert csess.lost == [(4001, "Unauthorized")]
    sevents = list(server.events())
    assert sevents[0] == Rejected(401, "/ws/tts/stream", "unauthorized")
    assert sevents[1] == ConnectionClosed(4001, "Unauthorized", False)


def test_unknown_path_is_404() -> None:
    client = ClientConnection(FakeSession(), "ws://h/ws/nope", now=0.0)
    server = ServerConnection(Router(), now=0.0)
    pump(client, server, 0.0)
    rejected = next(client.events())
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.status_code == 404 and rejected.kind == "not_found"
    assert next(server.events()) == Rejected(404, "/ws/nope", "not_found")


def test_429_with_retry_after_and_request_id() -> None:
    csess = FakeSession()
    client = ClientConnection(csess, "wss://h/ws/tts/stream", now=0.0)
    client.data_to_send()
    body = b'{"error":"Rate limit exceeded","error_code":"RATE_LIMITED","code":429}'
    response = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nX-Request-Id: req-42\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    client.receive_data(response[:40], 0.0)
    assert list(client.events()) == []
    client.receive_data(response[40:], 0.0)
    rejected = next(client.events())
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.kind == "rate_limited" and rejected.retry_after == 7.0
    assert rejected.request_id == "req-42" and rejected.error_code == "RATE_LIMITED"
    assert rejected.body == body
    assert isinstance(next(client.events()), ConnectionClosed)
    assert client.state is ConnectionState.CLOSED


def test_503_rejection_read_until_eof() -> None:
    client = ClientConnection(FakeSession(), "ws://h/ws/tts", now=0.0)
    client.data_to_send()
    client.receive_data(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: soon\r\n\r\ndown", 0.0)
    assert list(client.events()) == []
    client.receive_data(b"", 0.0)
    rejected = next(client.events())
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.kind == "restarting" and rejected.retry_after is None
    assert rejected.body == b"down" and rejected.message == "Service Unavailable"


def test_bad_accept_token_fails_the_client() -> None:
    csess = FakeSession()
    client = ClientConnection(csess, "ws://h/ws/tts", now=0.0)
    client.data_to_send()
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: nope\r\n\r\n",
        0.0,
    )
    (closed,) = list(client.events())
    assert isinstance(closed, ConnectionClosed) and closed.code is None
    assert client.state is ConnectionState.CLOSED and len(csess.lost) == 1


def test_plain_http_get() -> None:
    server = ServerConnection(Router(), now=0.0)
    server.receive_data(b"GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 404 ")
    assert server.state is ConnectionState.CLOSED
    assert next(server.events()) == Rejected(404, "/index.html", "not_found")

    def handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        return (200, [(b"content-type", b"text/plain")], b"hi") if path == "/" else None

    server = ServerConnection(Router(), now=0.0, http_handler=handler)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    out = server.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    assert b"content-length: 2\r\n" in out


def test_head_keeps_a_handlers_content_length_once() -> None:
    def handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        return 200, [(b"Content-Length", b"2")], b"hi"

    server = ServerConnection(Router(), now=0.0, http_handler=handler)
    server.receive_data(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    out = server.data_to_send()
    assert out.lower().count(b"content-length") == 1
    assert out.endswith(b"\r\n\r\n")  # no body


def test_malformed_upgrade_is_400() -> None:
    server = ServerConnection(Router(), now=0.0)
    server.receive_data(RAW_REQUEST.replace(b"Sec-WebSocket-Version: 13", b"X: y"), 0.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    server = ServerConnection(Router(), now=0.0)
    server.receive_data(b"\x16\x03\x01garbage\r\n\r\n", 0.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is ConnectionState.CLOSED


def test_http10_upgrade_without_host_is_400() -> None:
    server = ServerConnection(Router(), now=0.0)
    request = RAW_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"Host: example.com\r\n", b"")
    server.receive_data(request, 0.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is ConnectionState.CLOSED


def test_api_key_twice_is_refused() -> None:
    with pytest.raises(ValueError):
        ClientConnection(FakeSession(), "ws://h/ws/tts?api_key=x", api_key="y", now=0.0)


def test_server_app_close_going_away() -> None:
    client, server, csess, router = connect()
    router.sessions[0].outbox.append("pending")
    server.close(1012, "restarting")
    pump(client, server, 1.0)
    assert csess.received == ["pending"]
    assert [e for e in client.events() if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(1012, "restarting", True)
    ]
    assert router.sessions[0].lost == [(1012, "restarting")]


def test_handshake_timeout() -> None:
    server = ServerConnection(Router(), now=100.0, handshake_timeout=10.0)
    server.receive_data(RAW_REQUEST[:30], 101.0)
    assert server.next_deadline() == 110.0
    server.handle_timeout(109.9)
    assert server.state is ConnectionState.CONNECTING
    server.handle_timeout(110.0)
    assert server.state is ConnectionState.CLOSED
    assert list(server.events()) == [ConnectionClosed(None, "handshake timeout", False)]
    assert server.next_deadline() is None
    server.receive_data(RAW_REQUEST[30:], 111.0)  # ignored
    assert server.data_to_send() == b""


# -- messages --------------------------------------------------------------------------------------


def test_fragmented_message_is_reassembled() -> None:
    server, router = raw_server()
    text = "héllo wörld €".encode()
    server.receive_data(
        frame(0x1, text[:2], fin=False)  # splits the "é"
        + frame(0x9, b"ping!")  # control frame between fragments
        + frame(0x0, text[2:9], fin=False)
        + frame(0x0, text[9:]),
        1.0,
    )
    assert router.sessions[0].received == ["héllo wörld €"]
    frames = parse_frames(server.data_to_send())
    assert frames[0] == (0xA, b"ping!")  # ping answered
    assert frames[1] == (0x1, "echo:héllo wörld €".encode())


def test_oversize_message_closes_1009() -> None:
    # each fragment but the last counts FRAGMENT_COST bytes on top of its payload
    limit = 10 + 2 * FRAGMENT_COST
    server, router = raw_server(max_message_size=limit)
    server.receive_data(frame(0x1, b"x" * limit), 0.0)  # exactly at the limit: fine
    assert router.sessions[0].received == ["x" * limit]
    server.data_to_send()
    server.receive_data(frame(0x1, b"12345", fin=False) + frame(0x0, b"67890", fin=False), 0.0)
    assert server.state is ConnectionState.OPEN
    server.receive_data(frame(0x0, b"X"), 0.0)
    assert server.state is ConnectionState.CLOSED
    reason = f"message exceeds {limit} bytes"
    close = close_payload(1009, reason.encode())
    assert parse_frames(server.data_to_send()) == [(0x8, close)]
    assert router.sessions[0].lost == [(1009, reason)]
    assert [e for e in server.events() if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(1009, reason, False)
    ]


def test_oversize_single_frame_is_not_buffered() -> None:
    server, _router = raw_server(max_message_size=1000)
    huge = frame(0x1, b"a" * 100_000)
    server.receive_data(huge[:2000], 0.0)  # the header announces 100 kB; 1000 B is the limit
    assert server.state is ConnectionState.CLOSED
    assert parse_frames(server.data_to_send())[0][1][:2] == struct.pack("!H", 1009)


def test_invalid_utf8_closes_1007() -> None:
    server, router = raw_server()
    server.receive_data(frame(0x1, b"ok \xff\xfe"), 0.0)
    assert server.state is ConnectionState.CLOSED
    (close,) = parse_frames(server.data_to_send())
    assert close[0] == 0x8 and close[1][:2] == struct.pack("!H", 1007)
    assert router.sessions[0].received == []
    assert router.sessions[0].lost[0][0] == 1007


def test_binary_frame_gets_error_frame_and_stays_open() -> None:
    server, _router = raw_server()
    server.receive_data(frame(0x2, b"\x00\x01", fin=False) + frame(0x0, b"\x02"), 0.0)
    server.receive_data(frame(0x1, b"after"), 0.0)
    assert server.state is ConnectionState.OPEN
    frames = parse_frames(server.data_to_send())
    assert json.loads(frames[0][1]) == {
        "error": "Binary frames are not supported; send JSON text frames",
        "error_code": "VALIDATION_ERROR",
        "code": 400,
        "request_id": server.request_id,
    }
    assert frames[1] == (0x1, b"echo:after")


def test_server_session_error_becomes_error_frame() -> None:
    server, _router = raw_server()
    server.receive_data(frame(0x1, b"first") + frame(0x1, b"bad") + frame(0x1, b"x"), 0.0)
    frames = parse_frames(server.data_to_send())
    assert frames[0] == (0x1, b"echo:first")
    assert json.loads(frames[1][1]) == {
        "error": "bad input",
        "error_code": "VALIDATION_ERROR",
        "code": 400,
        "request_id": server.request_id,
        "context_id": "c1",
    }
    assert frames[2] == (0x1, b"echo:x")
    assert server.state is ConnectionState.OPEN


def test_client_session_error_closes_1002() -> None:
    client, server, csess, router = connect()
    list(client.events())
    router.sessions[0].outbox.append("bad")
    pump(client, server, 1.0)
    assert client.state is ConnectionState.CLOSED
    closed = [e for e in client.events() if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and closed[0].code == 1002 and not closed[0].by_peer
    assert isinstance(closed[0].error, RemoteProtocolError)
    assert csess.lost == [(1002, "bad input")]
    # the server saw the peer's 1002 close and replied
    sclosed = [e for e in server.events() if isinstance(e, ConnectionClosed)]
    assert sclosed == [ConnectionClosed(1002, "bad input", True)]
    assert router.sessions[0].lost == [(1002, "bad input")]


def test_binary_from_server_closes_1003() -> None:
    client, _server, csess, _router = connect()
    client.receive_data(frame(0x2, b"\x00", mask=False), 1.0)
    assert client.state is ConnectionState.CLOSED
    assert csess.lost[0][0] == 1003


def test_client_max_message_size() -> None:
    client, server, csess, router = connect(client_kw={"max_message_size": 8})
    router.sessions[0].outbox.append("123456789")
    pump(client, server, 1.0)
    assert csess.lost[0][0] == 1009 and csess.received == []


# -- pings, keepalive, deadlines -------------------------------------------------------------------


def test_server_answers_ping() -> None:
    server, _ = raw_server()
    server.receive_data(frame(0x9, b"abc"), 0.0)
    assert parse_frames(server.data_to_send()) == [(0xA, b"abc")]


def test_client_answers_ping() -> None:
    client, _server, _csess, _router = connect()
    client.receive_data(frame(0x9, b"xyz", mask=False), 1.0)
    out = client.data_to_send()
    assert out[0] == 0x8A and out[1] == 0x80 | 3  # masked pong with the same payload


def test_keepalive_ping_and_pong() -> None:
    client, server, _csess, _router = connect(client_kw={"ping_timeout": 5.0})
    assert client.next_deadline() == 15.0
    client.handle_timeout(14.0)
    assert client.data_to_send() == b""
    client.handle_timeout(15.0)
    ping = client.data_to_send()
    assert ping[0] == 0x89
    assert client.next_deadline() == 20.0
    server.receive_data(ping, 16.0)
    client.receive_data(server.data_to_send(), 16.0)
    assert client.next_deadline() == 31.0
    assert client.state is ConnectionState.OPEN


def test_traffic_postpones_keepalive() -> None:
    client, server, _csess, router = connect()
    router.sessions[0].outbox.append("hi")
    pump(client, server, 10.0)
    assert client.next_deadline() == 25.0


def test_ping_timeout_closes_1011() -> None:
    client, _server, csess, _router = connect(client_kw={"ping_timeout": 5.0})
    client.handle_timeout(15.0)
    client.data_to_send()  # the ping is lost
    client.handle_timeout(20.0)
    assert client.state is ConnectionState.CLOSED
    frames = parse_frames(client.data_to_send())
    assert frames and frames[0][0] == 0x8  # a close frame went out
    assert struct.unpack("!H", frames[0][1][:2]) == (1011,)
    closed = [e for e in client.events() if isinstance(e, ConnectionClosed)]
    assert closed == [ConnectionClosed(1011, "keepalive ping timeout", False)]
    assert csess.lost == [(1011, "keepalive ping timeout")]


def test_keepalive_disabled() -> None:
    client, _server, _csess, _router = connect(client_kw={"keepalive_interval": None})
    assert client.next_deadline() is None


def test_session_deadline_is_driven() -> None:
    client, server, csess, router = connect(client_kw={"keepalive_interval": None})
    ssess = router.sessions[0]
    ssess.deadline = 3.0
    assert server.next_deadline() == 3.0
    server.handle_timeout(2.0)
    assert ssess.timeouts == []
    server.handle_timeout(3.0)
    assert ssess.timeouts == [3.0]
    pump(client, server, 3.0)
    assert csess.received == ["tick:3.0"]


def test_client_handshake_timeout() -> None:
    csess = FakeSession()
    client = ClientConnection(csess, "ws://h/ws/tts", now=0.0, handshake_timeout=5.0)
    assert client.next_deadline() == 5.0
    client.handle_timeout(5.0)
    assert list(client.events()) == [ConnectionClosed(None, "handshake timeout", False)]
    assert csess.lost == [(None, "handshake timeout")]


# -- closing ---------------------------------------------------------------------------------------


def test_client_initiated_close() -> None:
    client, server, csess, router = connect()
    list(client.events())
    list(server.events())
    csess.outbox.append("last")
    client.close(1000, "done")
    assert client.state is ConnectionState.CLOSING
    assert client.next_deadline() == 5.0
    pump(client, server, 1.0)
    ssess = router.sessions[0]
    assert ssess.received == ["last"]  # queued messages go out before the close frame
    assert list(server.events()) == [ConnectionClosed(1000, "done", True)]
    assert list(client.events()) == [ConnectionClosed(1000, "done", False)]
    assert client.state is ConnectionState.CLOSED and server.state is ConnectionState.CLOSED
    client.receive_data(b"", 2.0)
    server.receive_data(b"", 2.0)
    client.close()
    assert csess.lost == [(1000, "done")] and ssess.lost == [(1000, "done")]
    assert list(client.events()) == [] and list(server.events()) == []


def test_session_initiated_close() -> None:
    client, server, csess, router = connect()
    list(client.events())
    list(server.events())
    csess.outbox.append("close please")
    pump(client, server, 1.0)
    assert csess.received == ["bye"]
    assert list(client.events()) == [ConnectionClosed(1000, "", True)]
    assert list(server.events()) == [ConnectionClosed(1000, "", False)]
    assert csess.lost == [(1000, "")] and router.sessions[0].lost == [(1000, "")]


def test_close_timeout() -> None:
    client, _server, csess, _router = connect()
    client.close(1001)
    client.data_to_send()  # the peer never answers
    assert client.next_deadline() == 5.0
    client.handle_timeout(5.0)
    assert client.state is ConnectionState.CLOSED
    assert csess.lost == [(1001, "")]


def test_eof_without_close_frame() -> None:
    client, server, csess, router = connect()
    server.receive_data(b"", 1.0)
    assert server.state is ConnectionState.CLOSED
    assert [e for e in server.events() if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(None, "connection lost", True)
    ]
    server.receive_data(b"", 1.0)
    assert router.sessions[0].lost == [(None, "connection lost")]
    client.receive_data(b"", 1.0)
    assert csess.lost == [(None, "connection lost")]


def test_peer_close_with_late_frames_ignored() -> None:
    server, router = raw_server()
    server.receive_data(frame(0x8, close_payload(1000, b"bye")) + frame(0x1, b"late"), 0.0)
    assert parse_frames(server.data_to_send()) == [(0x8, close_payload(1000, b"bye"))]
    assert router.sessions[0].received == []
    assert router.sessions[0].lost == [(1000, "bye")]


# -- byte-split robustness ------------------------------------------------------------------------

SMALL_STREAM = (
    RAW_REQUEST
    + frame(0x1, b'{"text": "one"}')
    + frame(0x1, "zwei €".encode()[:6], fin=False)
    + frame(0x9, b"p")
    + frame(0x0, "zwei €".encode()[6:])
    + frame(0x1, ("ü" * 200).encode())
)
CLIENT_STREAM = SMALL_STREAM + frame(0x1, b"x" * 70_000) + frame(0x1, b"")
EXPECTED = ['{"text": "one"}', "zwei €", "ü" * 200, "x" * 70_000, ""]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _server_receives(chunks: list[bytes]) -> tuple[list[str], bytes]:
    router = Router()
    server = ServerConnection(router, now=0.0)
    out = b""
    for chunk in chunks:
        server.receive_data(chunk, 0.0)
        out += server.data_to_send()
    assert server.state is ConnectionState.OPEN
    return router.sessions[0].received, out.split(b"\r\n\r\n", 1)[1]


def test_server_byte_by_byte() -> None:
    received, frames = _server_receives(_split(SMALL_STREAM, list(range(len(SMALL_STREAM)))))
    assert received == EXPECTED[:3]
    assert parse_frames(frames)[1] == (0xA, b"p")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(CLIENT_STREAM)), max_size=30))
def test_server_random_splits(cuts: list[int]) -> None:
    received, frames = _server_receives(_split(CLIENT_STREAM, cuts))
    assert received == EXPECTED
    assert parse_frames(frames)[1] == (0xA, b"p")


SERVER_OUTBOX = ["first", "ü€" * 300, "y" * 70_000, ""]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_client_random_splits(data: st.DataObject) -> None:
    csess = FakeSession()
    client = ClientConnection(csess, "ws://h/ws/tts/multi", now=0.0)
    router = Router(outbox=SERVER_OUTBOX)
    server = ServerConnection(router, now=0.0)
    server.receive_data(client.data_to_send(), 0.0)
    stream = server.data_to_send() + frame(0x9, b"q", mask=False)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    for chunk in _split(stream, cuts):
        client.receive_data(chunk, 0.0)
    assert client.state is ConnectionState.OPEN
    assert csess.received == SERVER_OUTBOX
    assert isinstance(next(client.events()), Connected)
