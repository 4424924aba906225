"""Exact-output tests of client-session details that mutation testing (mutmut) showed were not
pinned by other tests: wire format of commands, counters, event fields, error messages."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from kugelwire.protocol import (
    LocalProtocolError,
    MultiClientSession,
    StreamClientSession,
    TurnFinal,
    TurnReplay,
    TurnStarted,
    WordTimestamp,
    WordTimestamps,
)


def _feed(session: StreamClientSession | MultiClientSession, frame: dict[str, object]) -> None:
    session.receive_message(json.dumps(frame), 0.0)


def test_multi_wire_format_and_event_fields() -> None:
    m = MultiClientSession()
    m.create_context("a", 0.0, voice_id=1)
    assert m.messages_to_send() == ['{"text":" ","context_id":"a","voice_settings":{"voice_id":1}}']
    assert m.flush("a", 0.0) == 0
    assert m.messages_to_send() == ['{"flush":true,"context_id":"a"}']
    _feed(m, {"word_timestamps": [{"word": "Hi", "start_ms": 0, "end_ms": 10}], "chunk_id": 3,
              "context_id": "a"})
    _feed(m, {"final": True, "total_audio_seconds": 0.5, "total_text_chunks": 2,
              "total_audio_chunks": 4, "context_id": "a"})
    assert list(m.events()) == [
        TurnStarted(0, "a"),
        WordTimestamps(0, 3, (WordTimestamp("Hi", 0.0, 10.0, 0, 0, 1.0),), 0.0, "a"),
        TurnFinal(0, 0.5, 2, 4, "a"),
    ]


def test_frame_counters_count_one_per_frame() -> None:
    m = MultiClientSession()
    _feed(m, {"audio": "AAA=", "context_id": "zz"})  # unknown context: dropped
    _feed(m, {"interrupted": True})  # no cancel pending: dropped
    _feed(m, {"mystery": 1})  # unknown kind
    assert (m.dropped_frames, m.unknown_frames) == (2, 1)
    _feed(m, {"audio": "AAA=", "context_id": "zz"})
    assert m.dropped_frames == 3
    s = StreamClientSession()
    _feed(s, {"audio": "AAA="})  # no turn
    _feed(s, {"interrupted": True})
    assert (s.dropped_frames, s.unknown_frames) == (2, 0)
    _feed(s, {"interrupted": True})
    assert s.dropped_frames == 3


def test_frames_after_connection_lost_are_dropped_and_counted() -> None:
    s = StreamClientSession()
    s.connection_lost(1006, "", 0.0)
    _feed(s, {"audio": "AAA="})
    _feed(s, {"final": True})
    assert s.dropped_frames == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: StreamClientSession(cancel_timeout=0), "cancel_timeout must be positive"),
        (lambda: MultiClientSession(keepalive_interval=0), "keepalive_interval must be positive"),
    ],
)
def test_constructor_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        call()
    assert str(info.value) == message


def test_local_error_messages() -> None:
    s = StreamClientSession()
    s.send_text("a", 0.0)
    s.flush(0.0)
    with pytest.raises(LocalProtocolError, match=r"^turn 0 was already flushed; flush exactly"):
        s.flush(0.0)
    s.close_socket(0.0)
    with pytest.raises(LocalProtocolError) as info:
        s.send_text("x", 0.0)
    assert str(info.value) == "close_socket() was sent; the session takes no more input"
    m = MultiClientSession()
    m.create_context("a", 0.0)
    with pytest.raises(LocalProtocolError) as info:
        m.create_context("a", 0.0)
    assert str(info.value) == "context 'a' already exists"
    with pytest.raises(LocalProtocolError) as info:
        m.flush("b", 0.0)
    assert str(info.value) == "cannot flush context 'b': create it first"
    with pytest.raises(LocalProtocolError) as info:
        m.cancel(0.0, "b")
    assert str(info.value) == "cannot cancel context 'b': create it first"
    with pytest.raises(LocalProtocolError) as info:
        m.replay(TurnReplay(0, "x", False, True, "x", None), 0.0)
    assert str(info.value) == "not a multi-context replay"


def test_update_settings_pending_counts_each_request() -> None:
    s = StreamClientSession()
    s.send_text("Hi", 0.0)  # an open turn: other errors name it, settings rejections do not
    s.update_settings(0.0, speed=1.1)
    s.update_settings(0.0, speed=1.2)
    err = {"error": "Invalid settings update: no", "error_code": "VALIDATION_ERROR", "code": 400}
    _feed(s, err)
    _feed(s, err)
    _feed(s, err)  # a third one is not a settings rejection any more
    errors = [e for e in s.events() if type(e).__name__ == "ServerError"]
    assert [e.turn for e in errors] == [None, None, 0]


def test_send_text_empty_with_flush_flushes_the_open_turn() -> None:
    s = StreamClientSession()
    s.send_text("Hi", 0.0)
    s.messages_to_send()
    assert s.send_text("", 0.0, flush=True) == 0
    assert s.messages_to_send() == ['{"flush":true}']
    assert s.current_turn is None


def test_flushed_turn_is_replayed_flushed() -> None:
    s = StreamClientSession()
    s.send_text("Hello", 0.0)
    s.flush(0.0)
    s.connection_lost(1012, "restart", 0.0)
    term = [e for e in s.events() if type(e).__name__ == "ConnectionTerminated"]
    (replay,) = term[0].replay
    assert (replay.text, replay.flushed, replay.replayable) == ("Hello", True, True)
