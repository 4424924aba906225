"""The client's receive fast path (single-frame text messages skip wsproto) changes nothing:
the same messages, replies and close outcome as wsproto alone, however the bytes are split."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

from kugelwire.protocol import _fast
from kugelwire.protocol._errors import RemoteProtocolError
from kugelwire.protocol._ws import ClientConnection, ConnectionClosed


class _Recorder:
    """A MessageSession that records what it is given."""

    close_code = None

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.lost: list[Any] = []

    def receive_message(self, text: str, now: float) -> None:
        if text == "bad":
            raise RemoteProtocolError("bad message")
        self.messages.append(text)

    def messages_to_send(self) -> list[str]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def handle_timeout(self, now: float) -> None:
        pass

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self.lost.append((code, reason))


def _open(fast: bool, hold: bool = False) -> tuple[ClientConnection, _Recorder, WSConnection]:
    session = _Recorder()
    conn = ClientConnection(session, "ws://127.0.0.1:9/ws/tts/stream", now=0.0,
                            keepalive_interval=None, max_message_size=300_000,
                            yield_after_audio=hold)
    if not fast:
        conn._wsproto_idle = lambda: False  # type: ignore[method-assign]
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(conn.data_to_send())
    assert isinstance(next(server.events()), Request)
    conn.receive_data(server.send(AcceptConnection()), 0.0)
    list(conn.events())
    return conn, session, server


def _stream(server: WSConnection, rng: random.Random, tail: str) -> bytes:
    out = b""
    for i in range(40):
        kind = rng.random()
        if kind < 0.2:  # audio-like (yield_after_audio holds back after one of these)
            out += server.send(TextMessage(data=f'{{"audio":"{i}"}}'))
        elif kind < 0.5:
            size = rng.choice([0, 5, 125, 126, 1000, 65535, 65536, 70000])
            out += server.send(TextMessage(data=f"{i}:" + "x" * size))
        elif kind < 0.65:
            out += server.send(TextMessage(data=f"{i}:é€😀 ünïcode"))
        elif kind < 0.8:
            out += server.send(Ping(payload=b"p%d" % i))
        else:  # a fragmented message
            out += server.send(TextMessage(data=f"{i}:part1-", message_finished=False))
            out += server.send(TextMessage(data="part2", message_finished=True))
    if tail == "close":
        out += server.send(CloseConnection(code=1000, reason="bye"))
    elif tail == "bad-utf8":
        out += b"\x81\x02\xc3\x28"  # invalid UTF-8 in a text frame
    elif tail == "masked":
        out += b"\x81\x82abcd" + bytes(c ^ m for c, m in zip(b"hi", b"ab", strict=True))
    elif tail == "too-big":
        out += server.send(TextMessage(data="y" * 300_001))
    elif tail == "bad-message":
        out += server.send(TextMessage(data="bad")) + server.send(TextMessage(data="after"))
    elif tail == "non-minimal":
        out += b"\x81\x7e\x00\x05hello"
    return out


def _run(fast: bool, payload: bytes, cuts: list[int], hold: random.Random | None = None,
         holds: list[int] | None = None) -> tuple[Any, ...]:
    """Feed ``payload`` cut at ``cuts``. ``hold``: with ``yield_after_audio``, the held frames
    are taken at random moments (at once, after more bytes came, or only at the EOF)."""
    conn, session, _ = _open(fast, hold is not None)
    replies = b""
    last = 0
    held = 0
    for cut in [*cuts, len(payload)]:
        conn.receive_data(payload[last:cut], 1.0)
        replies += conn.data_to_send()
        last = cut
        while hold is not None and conn.held:
            held += 1
            if hold.random() < 0.3:
                break  # more bytes (or the EOF) come first
            count = len(session.messages)
            conn.receive_held(1.0)
            assert len(session.messages) > count or not conn.held
            replies += conn.data_to_send()
    if holds is not None:
        holds.append(held)
    conn.receive_data(b"", 2.0)
    replies += conn.data_to_send()
    closed = [e for e in conn.events() if isinstance(e, ConnectionClosed)]
    decoder = FrameProtocol(client=False, extensions=[])  # client frames are randomly masked
    decoder.receive_bytes(replies)
    frames = [(f.opcode, bytes(f.payload) if isinstance(f.payload, bytes | bytearray)
               else f.payload) for f in decoder.received_frames()]
    return session.messages, frames, [(c.code, c.reason, c.by_peer) for c in closed]


@pytest.mark.parametrize(
    "tail", ["none", "close", "bad-utf8", "masked", "too-big", "bad-message", "non-minimal"]
)
def test_fast_path_matches_wsproto(tail: str) -> None:
    rng = random.Random(tail)
    _, _, server = _open(True)
    payload = _stream(server, rng, tail)
    body = len(_stream(_open(True)[2], random.Random(tail), "none"))  # the frames, no tail
    for i in range(15):
        cuts = sorted(rng.sample(range(1, len(payload)), rng.choice([0, 1, 5, 40, 200])))
        if i % 3 == 0:  # the tail arrives on its own, when the fast path is at a frame boundary
            cuts = sorted({*(c for c in cuts if c < body), body})
        fast, slow = _run(True, payload, cuts), _run(False, payload, cuts)
        assert fast == slow
        assert len(fast[0]) >= 10 or tail == "bad-message"
        assert _run(True, payload, cuts, random.Random(i)) == slow  # with yield_after_audio


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["audio", "audio", "other", "ping"]), min_size=1, max_size=30),
       st.lists(st.integers(1, 400), max_size=8), st.integers(0, 2**32))
def test_yield_after_audio_changes_nothing(kinds: list[str], cuts: list[int], seed: int) -> None:
    """However the bytes are cut and whenever the held frames are taken (at once, after more
    bytes, or at the EOF), the session gets the same messages and the server the same replies
    as without yield_after_audio."""
    _, _, server = _open(True)
    payload = b"".join(
        server.send(Ping(payload=b"p%d" % i)) if kind == "ping"
        else server.send(TextMessage(data=('{"audio":"%d"}' if kind == "audio" else '{"x":%d}')
                                       % i))
        for i, kind in enumerate(kinds)
    )
    cuts = sorted({c for c in cuts if c < len(payload)})
    holds: list[int] = []
    assert _run(True, payload, cuts, random.Random(seed), holds) == _run(False, payload, cuts)
    if "other" in kinds and not cuts and kinds.index("other") < len(kinds) - 2 \
            and "audio" in kinds[kinds.index("other") + 1 : -1] \
            and "ping" not in kinds and _fast.ENABLED:
        assert holds[0], "an audio frame after another message in one read: held back"


def test_yield_after_audio_holds_the_rest_of_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fast, "ENABLED", True)  # whatever KUGELWIRE_FAST_PATHS says
    conn, session, server = _open(True, hold=True)
    texts = ['{"generation_started":true}', '{"audio":"1"}', '{"audio":"2"}', '{"final":true}']
    conn.receive_data(b"".join(server.send(TextMessage(data=t)) for t in texts), 1.0)
    assert session.messages == texts[:2] and conn.held  # the first audio, then a stop
    conn.receive_held(1.0)
    assert session.messages == texts and not conn.held
    conn.receive_data(b"".join(server.send(TextMessage(data=t)) for t in texts[1:3]), 1.0)
    assert session.messages == texts + texts[1:3] and not conn.held  # audio first: no stop


def test_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fast, "ENABLED", True)  # whatever KUGELWIRE_FAST_PATHS says
    conn, session, server = _open(True)
    calls: list[bytes | None] = []
    real = conn._ws.receive_data

    def spy(data: bytes | None) -> None:
        calls.append(data)
        real(data)

    conn._ws.receive_data = spy  # type: ignore[method-assign]
    payload = b"".join(server.send(TextMessage(data=f"m{i}")) for i in range(50))
    for i in range(0, len(payload), 7):
        conn.receive_data(payload[i : i + 7], 1.0)
    assert session.messages == [f"m{i}" for i in range(50)]
    assert calls == []  # wsproto never saw a byte of them


def test_masked_text_frames_decode_like_wsproto_frames() -> None:
    """The client's one-step text framing is read back exactly by a wsproto server."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request, TextMessage

    from kugelwire.protocol._fast import masked_text_frame

    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    [request] = list(server.events())
    client.receive_data(server.send(__import__("wsproto").events.AcceptConnection()))
    list(client.events())
    for n in (0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70001):
        text = "".join(chr(0x41 + (i * 7) % 26) if i % 5 else "ü" for i in range(n))
        frame = masked_text_frame(text.encode())
        assert frame[1] & 0x80, "client frames are masked"
        server.receive_data(frame)
        got = list(server.events())
        assert [type(e) for e in got] == [TextMessage] and got[0].data == text, n
    del request
