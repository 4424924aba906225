"""The client's hot paths give exactly what the plain code gives (differential, hypothesis).

* ``parse_server_message`` reads a message with json's C scanner when it can; forcing the plain
  ``json.loads`` path must give an equal frame or the same error, for any text.
* A plain token is framed as ``dumps({"text": token})`` by hand; it must be the same string.
* ``_audio_chunk`` / ``_audio_frame`` build the same objects as the dataclass constructors.
* The masking keys come from the OS's random source, four bytes per frame.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.protocol import RemoteProtocolError, StreamClientSession, _fast, _messages
from kugelwire.protocol._events import AudioChunk, _audio_chunk
from kugelwire.protocol._fast import Masks
from kugelwire.protocol._messages import AudioFrame, _audio_frame, dumps, parse_server_message

_KEYS = ["audio", "enc", "idx", "sr", "samples", "chunk_id", "context_id", "error", "final",
         "session_closed", "generation_started", "text", "word_timestamps", "chunk_complete"]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**54), st.floats(allow_nan=False),
    st.sampled_from(["", "pcm_s16le", "mulaw", "AAAA", "AAA=", "AA==", "A===", "ctx", "x" * 257]),
    st.text(max_size=8),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3), max_leaves=6)
_OBJECTS = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=7)


def _audio_objects() -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed audio frames (and near misses: every field may be off)."""
    def build(pcm: bytes, idx: int, sr: int, chunk: int | None, ctx: str | None,
              samples_off: int, enc: str) -> dict[str, Any]:
        frame = AudioFrame.from_bytes(pcm, enc=enc, idx=idx, sr=sr, chunk_id=chunk,
                                      context_id=ctx)
        obj = frame.to_dict()
        obj["samples"] = obj["samples"] + samples_off
        return obj

    return st.builds(
        build, st.binary(max_size=40), st.integers(0, 2**54), st.integers(0, 48000),
        st.none() | st.integers(-1, 2**54), st.none() | st.text(max_size=3),
        st.sampled_from([0, 0, 0, 1, -1]), st.sampled_from(["pcm_s16le", "mulaw", "alaw"]),
    )


def _texts() -> st.SearchStrategy[str]:
    seps = st.sampled_from([(",", ":"), (", ", ": "), (" ,", " :")])
    obj = st.one_of(_OBJECTS, _audio_objects())
    return st.one_of(
        st.builds(lambda o, s, pre, post: pre + json.dumps(o, separators=s) + post, obj, seps,
                  st.sampled_from(["", "", " ", "\n"]), st.sampled_from(["", "", " ", "x", "}",
                                                                        "{}", "\t"])),
        st.text(max_size=30),
    )


def _plain(text: str) -> Any:
    """parse_server_message with the fast paths off (json.loads, the general field checks)."""
    previous = _fast.fast_paths(False)
    try:
        return _outcome(text)
    finally:
        _fast.fast_paths(previous)


def _outcome(text: str) -> Any:
    try:
        return ("ok", parse_server_message(text))
    except RemoteProtocolError as exc:
        return ("error", str(exc))


@settings(max_examples=600, deadline=None)
@given(_texts())
def test_the_scanner_path_parses_like_json_loads(text: str) -> None:
    fast, plain = _outcome(text), _plain(text)
    assert fast == plain
    if fast[0] == "ok" and isinstance(fast[1], AudioFrame):
        assert fast[1]._has_idx == plain[1]._has_idx
        assert fast[1].data == plain[1].data


_KINDS = [k for k, _, _ in _messages._KINDS]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([*_KINDS, *_KEYS]), _VALUES), max_size=6))
def test_the_first_key_dispatch_parses_like_the_ladder(items: list[tuple[str, Any]]) -> None:
    obj = dict(items)  # any keys, in any order, with any values

    def outcome(parse: Any) -> Any:
        try:
            return ("ok", parse(dict(obj)))
        except RemoteProtocolError as exc:
            return ("error", str(exc))

    assert outcome(_messages._parse_object) == outcome(_messages._parse_ladder)


def test_the_first_key_dispatch_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fast, "ENABLED", True)  # whatever KUGELWIRE_FAST_PATHS says
    monkeypatch.setattr(_messages, "_parse_ladder", lambda obj: pytest.fail("ladder used"))
    for text in ['{"final":true,"chunk_id":0}', '{"session_closed":true}',
                 '{"generation_started":true,"chunk_id":3,"text":"Hi."}',
                 '{"chunk_complete":true,"chunk_id":0,"audio_seconds":1.5}',
                 '{"error":"voice_id is required","error_code":"MISSING_VOICE_ID","code":400}']:
        assert type(parse_server_message(text)).__name__ != "UnknownFrame"


def test_the_scanner_path_is_taken_for_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failing test is the only way to see that the hot path is used at all.
    monkeypatch.setattr(_fast, "ENABLED", True)  # whatever KUGELWIRE_FAST_PATHS says
    monkeypatch.setattr(_messages, "_TEMPLATES", {})
    calls = []
    real = _messages._scan_object
    monkeypatch.setattr(_messages, "_scan_object", lambda t, i: calls.append(t) or real(t, i))
    frame = AudioFrame.from_bytes(b"\x01\x02" * 40, idx=5, sr=24000, chunk_id=0)
    text = frame.to_json()
    assert parse_server_message(text) == frame
    # the audio is split off: the scanner reads only the other fields, never the base64, and
    # reads them once, with idx 0 (the template: no backslash, one "idx" key)
    rest = '{"enc":"pcm_s16le","idx":%d,"sr":24000,"samples":40,"chunk_id":0}'
    assert calls == [rest % 0]
    # the next frames of the template need no scanner at all, in either layout of json.dumps
    calls.clear()
    for idx in (6, 10, 123456789):
        later = AudioFrame.from_bytes(b"\x03\x04" * 40, idx=idx, sr=24000, chunk_id=0)
        assert parse_server_message(later.to_json()) == later
    # nor do the frames of later chunks (the layout: idx and chunk_id cut out)
    for chunk, idx in ((1, 0), (1, 1), (2, 0), (17, 3), (10**15 - 1, 0)):
        later = AudioFrame.from_bytes(b"\x03\x04" * 40, idx=idx, sr=24000, chunk_id=chunk)
        assert parse_server_message(later.to_json()) == later
    assert calls == []
    spaced = json.dumps(frame.to_dict())
    assert spaced.startswith('{"audio": "')
    assert parse_server_message(spaced) == frame
    assert len(calls) == 1 and frame.audio not in calls[0]
    assert parse_server_message(spaced.replace('"idx": 5', '"idx": 7')).idx == 7
    assert len(calls) == 1
    # with a backslash in the template (an escaped key), idx is proved by a parse with 0 and 1
    calls.clear()
    escaped = text[:-1] + ',"\\u0078":1}'
    assert parse_server_message(escaped) == frame
    assert len(calls) == 2 and all(call.endswith(escaped[-12:]) for call in calls)
    assert '"idx":0' in calls[0] and '"idx":1' in calls[1]


def test_the_template_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fast, "ENABLED", True)
    monkeypatch.setattr(_messages, "_TEMPLATES", {})
    for chunk in range(_messages._MAX_TEMPLATES + 10):  # a template per chunk
        frame = AudioFrame.from_bytes(b"\x01\x02", idx=1, sr=24000, chunk_id=chunk)
        assert parse_server_message(frame.to_json()) == frame
        assert len(_messages._TEMPLATES) <= _messages._MAX_TEMPLATES
    # a long template (a long unknown field) is read by the scanner each time, never kept
    frame = AudioFrame.from_bytes(b"\x01\x02", idx=1, sr=24000, chunk_id=0)
    long = frame.to_json()[:-1] + ',"extra":"' + "x" * _messages._MAX_TEMPLATE_SIZE + '"}'
    _messages._TEMPLATES.clear()
    assert parse_server_message(long) == frame
    assert parse_server_message(long) == frame
    assert _messages._TEMPLATES == {}


@st.composite
def _split_texts(draw: st.DrawFn) -> str:
    """Texts that start as the server's audio frames do (``{"audio":"``, or with json.dumps's
    default separators), then anything: valid
    and invalid base64 (backslashes, escaped quotes, non-ASCII, control characters), then the
    other fields (often all present and matching, so the split path would take them) with an
    extra that may repeat ``audio``, carry ``error``, escape a key, or text after the object."""
    pcm = draw(st.binary(max_size=60).map(lambda b: b[: len(b) // 2 * 2]))
    audio = draw(st.one_of(
        st.just(base64.b64encode(pcm).decode()),
        st.just(base64.b64encode(pcm).decode()),
        st.builds(lambda a, i, c: a[:i] + c + a[i:], st.just(base64.b64encode(pcm).decode()),
                  st.integers(0, 80), st.sampled_from(["\\", '\\"', "\\/", "\u00e9", "\n", " ",
                                                       "=", "A"])),
        st.text(alphabet='AQgw+/=\\"\u00e9\n ', max_size=12),
    ))
    # idx as the server writes it (any value), and tokens only a general parser reads right
    def number(plain: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            plain, st.integers(0, 2**53 + 2).map(str),
            st.sampled_from(["07", "00", "-1", "-0", "1.5", "1e2", " 3", "3 ", "\t3", "+3",
                             "0x1", "9007199254740993", "99999999999999999", "\u0661", "true",
                             '"3"', "null"]),
        )

    idx = draw(number(st.integers(0, 3).map(str)))
    chunk = draw(number(st.sampled_from(["0", "0", "1", "2"])))
    colon = draw(st.sampled_from([":", ":", ": "]))
    fields = [f'"enc"{colon}"pcm_s16le"', f'"idx"{colon}{idx}', f'"sr"{colon}24000',
              f'"samples"{colon}{len(pcm) // 2 + draw(st.sampled_from([0, 0, 0, 1]))}',
              f'"chunk_id"{colon}{chunk}']
    if draw(st.booleans()):
        fields.append(fields.pop(1))  # idx last: no comma after its digits
    extra = draw(st.sampled_from(['', '', '"error":"x"', '"audio":"AA=="', '"\\u0061udio":"AA=="',
                                  '"\\u0065rror":"x"', '"idx":-1', '"idx":1', '"samples":0',
                                  '"enc":"mulaw"', '"final":true', '"context_id":"c"',
                                  '"\\u0069dx":9', '"\\"idx":5', '"x":"\\"idx\\":4"',
                                  '"context_id":"\\"idx\\":"']))
    if extra:
        fields.insert(draw(st.integers(0, len(fields))), extra)
    after = draw(st.sampled_from(["", "", "", "", "", " ", "}", "x"]))
    comma = draw(st.sampled_from([",", ",", ", "]))
    tail = draw(st.one_of(
        st.just(comma + comma.join(fields) + "}" + after),
        st.just(comma + comma.join(fields) + "}" + after),
        st.just(comma + comma.join(fields) + "}" + after),
        st.builds(lambda o: "," + json.dumps(o, separators=(",", ":"))[1:], _OBJECTS),
        st.sampled_from(["}", ",}", "," + ",".join(fields), ""]),
        st.text(max_size=12),
    ))
    return draw(st.sampled_from(['{"audio":"', '{"audio":"', '{"audio": "'])) + audio + '"' + tail


@settings(max_examples=1500, deadline=None)
@given(_split_texts())
def test_the_audio_split_parses_like_json_loads(text: str) -> None:
    fast, plain = _outcome(text), _plain(text)
    assert fast == plain
    if fast[0] == "ok" and isinstance(fast[1], AudioFrame):
        assert fast[1]._has_idx == plain[1]._has_idx
        # a parsed frame's audio is decoded without a second check: it must be what the strict
        # decoder gives
        assert fast[1].data == plain[1].data == base64.b64decode(fast[1].audio, validate=True)


@settings(max_examples=500, deadline=None)
@given(st.lists(_split_texts(), min_size=2, max_size=5), st.booleans())
def test_frames_in_a_row_parse_like_json_loads(texts: list[str], fresh: bool) -> None:
    """A frame is checked against the template of the frame before it first: one that starts
    and ends as that one but differs between (not idx's digits) is still read right."""
    if fresh:
        _messages._TEMPLATES.clear()
    for text in texts:
        fast, plain = _outcome(text), _plain(text)
        assert fast == plain
        if fast[0] == "ok" and isinstance(fast[1], AudioFrame):
            assert fast[1]._has_idx == plain[1]._has_idx
            assert fast[1].data == plain[1].data


def test_a_frame_like_the_last_but_between_is_read_by_the_general_path() -> None:
    frame = AudioFrame.from_bytes(b"\x01\x02", idx=3, sr=24000, chunk_id=0)
    text = frame.to_json()
    # idx last, so the template's text after the digits is "}"
    last = text.replace(',"idx":3', "")[:-1] + ',"idx":3}'
    assert parse_server_message(last) == frame
    for between in ('3,"idx":4', '3,"samples":2', "3 ", "03", "3.0", ""):
        odd = last.replace('"idx":3}', f'"idx":{between}}}')
        assert _outcome(odd) == _plain(odd), between


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40), st.booleans())
def test_a_plain_token_is_framed_like_dumps(token: str, flush: bool) -> None:
    session = StreamClientSession(voice_id=1)
    session.send_text("Hello ", 0.0)  # the first message of a turn carries the config
    session.send_text(token, 0.0, flush=flush)
    first, second = session.messages_to_send()
    assert json.loads(first)["voice_id"] == 1
    expected = {"text": token, "flush": True} if flush else {"text": token}
    assert second == dumps(expected)
    if not flush:
        session.flush(0.0)
        assert session.messages_to_send() == [dumps({"flush": True})]


@given(st.integers(0, 2**53), st.floats(0, 1e6), st.none() | st.text(max_size=4))
def test_fast_constructors_build_equal_objects(turn: int, offset: float, ctx: str | None) -> None:
    frame = _audio_frame("AAAA", "pcm_s16le", 3, 24000, 1, 7, ctx)
    assert frame == AudioFrame("AAAA", "pcm_s16le", 3, 24000, 1, 7, ctx)
    assert frame.data == b"\x00\x00\x00" and frame._has_idx
    assert _audio_chunk(turn, frame, offset, ctx) == AudioChunk(turn, frame, offset, ctx)


def test_masks_are_four_fresh_bytes_from_a_refilled_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[bytes] = []

    def urandom(n: int) -> bytes:
        pools.append(random.Random(len(pools)).randbytes(n))
        return pools[-1]

    monkeypatch.setattr("kugelwire.protocol._fast._urandom", urandom)
    masks = Masks()
    got = [masks() for _ in range(1025)]
    assert [len(p) for p in pools] == [4096, 4096]  # one system call per 1,024 masks
    assert got[:1024] == [pools[0][i : i + 4] for i in range(0, 4096, 4)]  # each byte once
    assert got[1024] == pools[1][:4]


def _reference_deadline(conn: Any) -> float | None:
    found = [d for d in conn._deadlines() if d is not None]
    return min(found) if found else None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["text", "cancel", "partial", "rest", "time", "audio"]),
                          st.floats(0.0, 40.0)), max_size=25))
def test_the_client_connection_deadline_is_the_earliest_of_its_timers(
    ops: list[tuple[str, float]],
) -> None:
    import base64
    import hashlib

    from kugelwire.transports._api import ConnectOptions

    core = ConnectOptions(api_key="k", config={"voice_id": 1}).core(
        "stream", "ws://127.0.0.1:9/ws/tts/stream", 0.0)
    conn = core.conn
    assert conn.next_deadline() == _reference_deadline(conn)  # connecting
    request = core.data_to_send()
    key = next(line.split(b": ", 1)[1] for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    core.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n", 0.0)
    frame = AudioFrame.from_bytes(b"\x00\x01" * 40, idx=0, sr=24000, chunk_id=0).to_json().encode()
    assert 126 <= len(frame) < 65536
    now = 0.0
    for op, t in ops:
        now += t
        if core.finished:
            break
        if op == "text":
            core.stream_send_text("Hello. ", now)
        elif op == "cancel":
            core.stream_cancel(now)
        elif op == "partial":
            core.receive_data(b"\x81\x7e\x01\x00" + b"{", now)  # a frame that never finishes
        elif op == "audio":
            core.receive_data(bytes([0x81, 126]) + len(frame).to_bytes(2, "big") + frame, now)
        elif op == "time":
            core.handle_timeout(now)
        core.data_to_send()
        assert conn.next_deadline() == _reference_deadline(conn), (op, conn.state)


def _exact_length_texts() -> st.SearchStrategy[tuple[int, str]]:
    """``(size, text)``: text of the base64 length of ``size`` bytes, made of base64 characters,
    padding and a few that are not base64."""
    def texts(size: int) -> st.SearchStrategy[tuple[int, str]]:
        length = (size + 2) // 3 * 4
        return st.tuples(st.just(size), st.text(alphabet="AQgw+/=\\ \n-_", min_size=length,
                                                max_size=length))

    return st.integers(0, 12).flatmap(texts)


@settings(max_examples=500, deadline=None)
@given(_exact_length_texts())
def test_the_exact_length_decode_accepts_what_the_strict_decode_accepts(
    case: tuple[int, str],
) -> None:
    size, text = case

    def outcome(decode: Any) -> Any:
        try:
            data = decode(text)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            return None
        return data if len(data) == size else None

    for codec in (_messages._stdlib_base64_codec(), _messages._base64_codec()):
        _, strict, _, exact = codec
        assert outcome(exact) == outcome(strict)


@st.composite
def _generation_texts(draw: st.DrawFn) -> str:
    """``generation_started`` as the server writes it, and near misses: any chunk_id token, any
    text (escaped by json.dumps, or raw with quotes, backslashes and control characters), other
    keys after it, spaces, text after the object."""
    chunk = draw(st.one_of(st.integers(0, 2**53 + 2).map(str),
                           st.sampled_from(["0", "07", "-1", "1.5", " 3", "null", '"3"', ""])))
    value = draw(st.one_of(
        st.text(max_size=12).map(json.dumps),
        st.text(alphabet='ab"\\\n\t\u00e9', max_size=8).map(lambda t: '"' + t + '"'),
        st.sampled_from(['"x', '"\\u00', '"\\ud800"', "1", "null", '"a"b"']),
    ))
    tail = draw(st.sampled_from(["}", "}", "}", ',"context_id":"c"}', "} ", "}x", ',"x":1}', ""]))
    head = draw(st.sampled_from(['{"generation_started":true,"chunk_id":',
                                 '{"generation_started":true,"chunk_id":',
                                 '{"generation_started": true, "chunk_id": ',
                                 '{"generation_started":false,"chunk_id":']))
    text_key = draw(st.sampled_from([',"text":', ',"text":', ', "text": ', ',"text" :']))
    return head + chunk + text_key + value + tail


@settings(max_examples=800, deadline=None)
@given(_generation_texts())
def test_generation_started_in_place_parses_like_json_loads(text: str) -> None:
    assert _outcome(text) == _plain(text)


def test_generation_started_in_place_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fast, "ENABLED", True)
    monkeypatch.setattr(_messages, "_scan_object", lambda t, i: pytest.fail("scanner used"))
    text = '{"generation_started":true,"chunk_id":12,"text":"Gr\\u00fc\\u00dfe, \\"you\\"."}'
    frame = parse_server_message(text)
    assert frame == _messages.GenerationStartedFrame(12, 'Grüße, "you".')
    assert type(frame) is _messages.GenerationStartedFrame


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["pcm_s16le", "mulaw", "alaw"]),
       st.integers(0, 2**53), st.integers(1, 96000), st.none() | st.integers(0, 2**53),
       st.none() | st.text(max_size=8), st.booleans())
def test_a_servers_audio_text_is_its_frames_json(
    data: bytes, enc: str, idx: int, sr: int, chunk_id: int | None, ctx: str | None, on: bool
) -> None:
    fields: dict[str, Any] = dict(enc=enc, idx=idx, sr=sr, chunk_id=chunk_id, context_id=ctx)
    previous = _fast.fast_paths(on)
    try:
        text = _messages.audio_frame_text(data, enc, idx, sr, chunk_id, ctx)
    finally:
        _fast.fast_paths(previous)
    assert text == AudioFrame.from_bytes(data, **fields).to_json() == dumps(
        AudioFrame.from_bytes(data, **fields).to_dict())
