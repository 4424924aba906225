"""The fast-path switch (``kugelwire.protocol.fast_paths``) and the differential tests of the fast
paths that have no other: the hand-written HTTP responses against h11, the frozen-slot
constructors against the dataclass constructors, the server's token shortcut against the general
parse, and a whole turn through a ClientConnection and a ServerConnection with the switch on and
off (the same events both ways)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kugelwire.protocol import (
    LocalProtocolError,
    RemoteProtocolError,
    StreamClientSession,
    StreamServerSession,
    _fast,
    fast_paths,
)
from kugelwire.protocol._events import (
    AudioChunk,
    GenerationStarted,
    TurnStarted,
    _audio_chunk,
    _generation_started,
    _turn_started,
)
from kugelwire.protocol._messages import (
    AudioFrame,
    GenerationStartedFrame,
    _audio_frame,
    _generation_started_frame,
    _set_checked,
    dumps,
    parse_client_message,
)
from kugelwire.protocol._server import SynthesisRequested
from kugelwire.protocol._ws import ClientConnection, ServerConnection


@pytest.fixture
def switch() -> Iterator[None]:
    previous = _fast.ENABLED
    yield
    fast_paths(previous)


def test_the_switch_returns_the_previous_setting(switch: None) -> None:
    fast_paths(True)
    assert fast_paths(False) is True and not _fast.enabled()
    assert fast_paths(True) is False and _fast.enabled()


@pytest.mark.parametrize(("value", "on"), [("0", False), ("off", False), ("1", True), ("", True)])
def test_the_environment_sets_the_switch_at_import(value: str, on: bool) -> None:
    env = {**os.environ, "KUGELWIRE_FAST_PATHS": value}
    code = "from kugelwire.protocol import _fast; print(_fast.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == str(on)


# -- HTTP responses: by hand vs h11 --------------------------------------------------------------
_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_VALUE = st.text("abcdefghijklmnopqrstuvwxyz ABC0123456789/;=,.", max_size=20).map(str.strip)


def _h11_server(request: bytes) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    with contextlib.suppress(h11.RemoteProtocolError):
        conn.next_event()  # a bad request: h11 still lets a server answer it
    return conn


@given(
    st.integers(200, 599),
    st.lists(st.tuples(_TOKEN.map(str.encode), _VALUE.map(str.encode)), max_size=4).map(
        lambda hs: [h for h in hs if h[0] not in (b"content-length", b"connection",
                                                  b"transfer-encoding")]
    ),
    st.binary(max_size=64),
    st.sampled_from([b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", b"GARBAGE\r\n\r\n",
                     b"GET /x HTTP/1.0\r\n\r\n"]),
    st.booleans(),
)
def test_http_responses_are_the_bytes_h11_writes(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, request: bytes, length: bool
) -> None:
    if length:  # a handler that set its own Content-Length
        headers = [*headers, (b"Content-Length", str(len(body)).encode())]
    if status in (204, 304):
        body = b""
    fast = _fast.http_response(_h11_server(request), status, headers, body)
    plain = _fast.h11_response(_h11_server(request), status, headers, body)
    if b"HTTP/1.0" not in request:
        assert fast == plain  # byte for byte
    # an HTTP/1.0 request: h11 writes its own "Connection: close"; the same response
    assert _parsed(fast) == _parsed(plain)
    assert _parsed(fast)[0] == status


def _parsed(raw: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """A response as an h11 client reads it: status, reason, headers (names lower-case), body."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/x", headers=[("host", "a")]))
    client.receive_data(raw)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return response.status_code, response.reason, list(response.headers), body


def test_http_responses_with_the_switch_off_come_from_h11(switch: None) -> None:
    fast_paths(False)
    calls: list[int] = []
    conn = _h11_server(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    real = conn.send
    conn.send = lambda event: calls.append(1) or real(event)  # type: ignore[method-assign]
    assert _fast.http_response(conn, 404, [], b"{}").startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert calls, "h11 wrote the response"


def _server_bytes(request: bytes) -> bytes:
    conn = ServerConnection(lambda path: None, now=0.0,
                            http_handler=lambda path: (200, [(b"content-type", b"text/plain")],
                                                       b"hello") if path == "/hi" else None,
                            request_id="req_1")
    conn.receive_data(request, 0.0)
    return conn.data_to_send()


@pytest.mark.parametrize("request_bytes", [
    b"GET /hi HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /hi HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /nothing HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /hi HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /ws/tts/stream HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"GET /ws/tts/stream HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
])
def test_a_server_connection_answers_http_the_same_either_way(
    switch: None, request_bytes: bytes
) -> None:
    fast_paths(True)
    fast = _server_bytes(request_bytes)
    fast_paths(False)
    assert _server_bytes(request_bytes) == fast
    assert fast.startswith(b"HTTP/1.1 ")
    if request_bytes.startswith(b"HEAD"):
        assert fast.endswith(b"\r\n\r\n"), "an answer to HEAD has no body"


# -- frozen-slot constructors vs the dataclass constructors --------------------------------------
@given(st.integers(0, 2**53), st.floats(0, 1e6), st.none() | st.text(max_size=4),
       st.sampled_from(["pcm_s16le", "mulaw", "alaw"]), st.integers(0, 2**53))
def test_frozen_constructors_match_the_dataclass_constructors(
    turn: int, offset: float, ctx: str | None, enc: str, idx: int
) -> None:
    for on in (True, False):
        previous = fast_paths(on)
        try:
            frame = _audio_frame("AAAA", enc, idx, 24000, 3, None, ctx)
            plain = AudioFrame("AAAA", enc, idx, 24000, 3, None, ctx)
            assert frame == plain and frame.data == plain.data == b"\0\0\0"
            assert frame._has_idx and frame._checked is on
            # every field but _checked
            assert dataclasses.astuple(frame)[:-1] == dataclasses.astuple(plain)[:-1]
            assert type(frame) is AudioFrame  # the twin became the class itself
            chunk = _audio_chunk(turn, frame, offset)
            assert chunk == AudioChunk(turn, frame, offset) and chunk.context_id is None
            assert type(chunk) is AudioChunk
            assert _audio_chunk(turn, frame, offset, ctx) == AudioChunk(turn, frame, offset, ctx)
            with pytest.raises(dataclasses.FrozenInstanceError):
                chunk.turn = 1  # type: ignore[misc]
            with pytest.raises(dataclasses.FrozenInstanceError):
                frame.idx = 1  # type: ignore[misc]
            started = _turn_started(turn, ctx)
            assert started == TurnStarted(turn, ctx) and type(started) is TurnStarted
            assert _turn_started(turn) == TurnStarted(turn)
            generation = _generation_started(turn, idx, enc, ctx)
            assert generation == GenerationStarted(turn, idx, enc, ctx)
            assert type(generation) is GenerationStarted
            assert _generation_started(turn, idx, enc) == GenerationStarted(turn, idx, enc)
            head = _generation_started_frame(idx, enc, ctx)
            assert head == GenerationStartedFrame(idx, enc, ctx)
            assert type(head) is GenerationStartedFrame
        finally:
            fast_paths(previous)


# -- the server's audio frames: audio_json vs dumps(to_dict()) ----------------------------------
_INTS = st.integers(-(2**63), 2**63) | st.booleans() | st.floats(allow_nan=False, width=32)


_ENCS = st.sampled_from(["pcm_s16le", "mulaw", "alaw"]) | st.text(max_size=3)


@given(st.binary(max_size=64), _ENCS, _INTS, _INTS, _INTS, st.none() | _INTS,
       st.none() | st.text(max_size=6))
def test_audio_frames_are_written_as_dumps_writes_them(
    pcm: bytes, enc: str, idx: Any, sr: Any, samples: Any, chunk_id: Any, ctx: Any
) -> None:
    """A frame built from bytes (its audio base64 by construction) writes the same text with
    the fast path on as ``dumps(to_dict())``, whatever odd values its other fields hold; with
    the switch off it is ``dumps`` itself."""
    frame = AudioFrame.from_bytes(pcm, enc=enc, idx=0, sr=24000, chunk_id=None, context_id=ctx)
    frame = dataclasses.replace(frame, idx=idx, sr=sr, samples=samples, chunk_id=chunk_id)
    _set_checked(frame, True)  # replace() checks again; the audio is still from_bytes' base64
    plain = dumps(frame.to_dict())
    assert frame.to_json() == plain
    assert json.loads(plain)["audio"] == base64.b64encode(pcm).decode()
    previous = fast_paths(False)
    try:
        assert frame.to_json() == plain
    finally:
        fast_paths(previous)


def test_an_audio_frame_not_known_to_be_base64_goes_through_dumps() -> None:
    """A frame made by hand (audio not checked) is escaped as ``dumps`` does, quote and all."""
    frame = AudioFrame('a"b\\c\u2028', idx=1, samples=1)
    assert not frame._checked
    assert frame.to_json() == dumps(frame.to_dict())
    assert json.loads(frame.to_json())["audio"] == 'a"b\\c\u2028'


# -- the server's token shortcut vs the general parse ---------------------------------------------
@given(st.dictionaries(st.sampled_from(["text", "flush"]),
                       st.none() | st.booleans() | st.integers(-1, 1) | st.text(max_size=5),
                       max_size=2))
def test_the_token_shortcut_parses_like_the_general_path(obj: dict[str, Any]) -> None:
    text = json.dumps(obj)

    def outcome(on: bool) -> Any:
        previous = fast_paths(on)
        try:
            return ("ok", parse_client_message(text))
        except (RemoteProtocolError, LocalProtocolError) as exc:
            return ("error", type(exc), str(exc))
        finally:
            fast_paths(previous)

    assert outcome(True) == outcome(False)


# -- a whole turn through both connections, switch on and off -------------------------------------
_UPGRADE_URL = "ws://127.0.0.1:9/ws/tts/stream"


def _turn(text: str, cuts: int) -> tuple[list[Any], list[Any], list[str]]:
    """Client and server connections joined in memory; one turn of ``text`` (the bytes passed on
    in pieces of ``cuts`` bytes); the client session's events, the server's, and the
    connections' event kinds."""
    client_session = StreamClientSession(voice_id=1)
    server_session = StreamServerSession()
    client = ClientConnection(client_session, _UPGRADE_URL, now=0.0, keepalive_interval=None)
    server = ServerConnection(lambda path: server_session, now=0.0, request_id="req_1")
    client_session.send_text(text, 0.0, flush=True)
    conn_events: list[str] = []
    server_events: list[Any] = []
    client_events: list[Any] = []

    def pump(src: Any, dst: Any) -> bool:
        data = src.data_to_send()
        for i in range(0, len(data), cuts):
            dst.receive_data(data[i : i + cuts], 1.0)
        return bool(data)

    for _ in range(200):
        moved = pump(client, server) | pump(server, client)
        conn_events += [type(e).__name__ for e in (*client.events(), *server.events())]
        for event in server_session.events():
            server_events.append(event)
            if isinstance(event, SynthesisRequested):
                server_session.send_audio(event.ref, b"\1\0" * 240, 1.0)
                server_session.complete_chunk(event.ref, 1.0, 1.0)
        server._flush_session()
        client_events += list(client_session.events())
        if not moved and not server.unsent_size and not client.unsent_size:
            break
    return client_events, server_events, conn_events


def _comparable(events: list[Any]) -> list[Any]:
    out = []
    for event in events:
        if isinstance(event, AudioChunk):
            out.append(("audio", event.turn, event.frame.pcm16(), event.offset_s))
        else:
            out.append(repr(event))
    return out


@pytest.mark.parametrize("cuts", [1, 7, 4096])
def test_a_turn_gives_the_same_events_with_the_fast_paths_on_and_off(
    switch: None, cuts: int
) -> None:
    text = "Hello there. How are you today? Fine."
    runs = []
    for on in (True, False):
        fast_paths(on)
        client_events, server_events, conn_events = _turn(text, cuts)
        runs.append((_comparable(client_events), [repr(e) for e in server_events], conn_events))
    assert runs[0] == runs[1]
    kinds = [e[0] if isinstance(e, tuple) else e.split("(")[0] for e in runs[0][0]]
    assert "audio" in kinds and "TurnFinal" in kinds, kinds  # the turn really ran
    assert {"Connected", "Accepted"} <= set(runs[0][2])


# -- masked text frames: one step vs wsproto ---------------------------------------------------
def _wsproto_client() -> Any:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    return client


@given(st.text(max_size=200), st.sampled_from([0, 125, 126, 65535, 65536, 70000]),
       st.binary(min_size=4, max_size=4))
def test_masked_text_frames_are_the_bytes_wsproto_writes(text: str, pad: int, key: bytes) -> None:
    from wsproto.events import TextMessage

    text += "x" * pad  # across the 7-bit, 16-bit and 64-bit length forms

    client = _wsproto_client()
    with pytest.MonkeyPatch.context() as patch:  # the same masking key for both
        patch.setattr(_fast, "_mask", lambda: key)
        patch.setattr("wsproto.frame_protocol.os.urandom", lambda n: key)
        assert _fast.masked_text_frame(text.encode()) == client.send(TextMessage(data=text))


@given(st.text(max_size=200), st.sampled_from([0, 125, 126, 65535, 65536, 70000]))
def test_server_text_frames_are_the_bytes_wsproto_writes(text: str, pad: int) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    text += "x" * pad  # across the 7-bit, 16-bit and 64-bit length forms
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    list(server.events())
    server.send(AcceptConnection())
    data = text.encode()
    assert _fast.text_frame_head(len(data)) + data == server.send(TextMessage(data=text))


def _open_pair() -> tuple[StreamClientSession, ClientConnection, ServerConnection]:
    """A stream client and a server connection, upgraded, in memory."""
    session = StreamClientSession(voice_id=1)
    conn = ClientConnection(session, _UPGRADE_URL, now=0.0, keepalive_interval=None)
    server = ServerConnection(lambda path: StreamServerSession(), now=0.0)
    server.receive_data(conn.data_to_send(), 0.0)
    conn.receive_data(server.data_to_send(), 0.0)
    return session, conn, server


def test_with_the_switch_off_the_server_frames_through_wsproto(switch: None) -> None:
    session, conn, server = _open_pair()
    session.send_text("Hi.", 0.0, flush=True)
    server.receive_data(conn.data_to_send(), 0.0)
    (accepted,) = server.events()
    served = accepted.session  # type: ignore[attr-defined]
    (request,) = served.events()
    server.data_to_send()  # generation_started
    framed: list[Any] = []
    real = server._ws.send
    server._ws.send = lambda event: framed.append(event) or real(event)  # type: ignore[method-assign]
    outputs = []
    for on in (True, False):
        fast_paths(on)
        framed.clear()
        served.send_audio(request.ref, bytes(range(256)) * 4, 0.0)  # one frame
        outputs.append(server.data_to_send())
        assert outputs[-1] and bool(framed) is not on  # off: wsproto framed the message
    assert outputs[0].replace(b'"idx":0', b'"idx":1') == outputs[1]  # the same bytes either way


def test_with_the_switch_off_the_client_frames_through_wsproto(switch: None) -> None:
    session, conn, _ = _open_pair()
    framed: list[Any] = []
    real = conn._ws.send
    conn._ws.send = lambda event: framed.append(event) or real(event)  # type: ignore[method-assign]
    for on in (True, False):
        fast_paths(on)
        framed.clear()
        session.send_text("Hi ", 0.0)
        conn.data_to_send()
        assert bool(framed) is not on  # off: wsproto framed the message


def test_the_constructors_fill_a_layout_twin_where_python_allows_it() -> None:
    from kugelwire.protocol import _fast

    assert _fast._layout_twin(AudioFrame) is not None  # the fast way is the one taken
    assert _fast._layout_twin(AudioChunk) is not None

    @dataclasses.dataclass(frozen=True)
    class WithDict:  # no slots: no twin, the slot-descriptor way would not apply either
        x: int

    assert _fast._layout_twin(WithDict) is None

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        x: int
        y: list[int]

    make = _fast.frozen_constructor(Slotted, ("x",), fixed={"y": "[]"})
    a, b = make(1), make(2)
    assert type(a) is Slotted and a == Slotted(1, []) and a.y is not b.y
