"""Client role of /ws/tts/stream: Appendix A transcripts, turn matching, barge-in, timers, replay.

The last part drives the client against a scripted fake server (written here, independent of
kugelwire's own server) with frames delivered in random batches and cancels at random points.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict, deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._client import StreamClientSession, unspoken_text
from kugelwire.protocol._errors import LocalProtocolError, RemoteProtocolError
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ConnectionTerminated,
    Diagnostic,
    ErrorCode,
    GenerationStarted,
    Interrupted,
    ServerError,
    SettingsUpdated,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    TurnReplay,
    TurnStarted,
    Warning,
    WordTimestamps,
)
from kugelwire.protocol._messages import AudioFrame, Usage, WordTimestamp

CONFIG = {"voice_id": 1071, "model_id": "kugel-3", "language": "en", "sample_rate": 24000}
USAGE = {
    "audio_seconds": 1.2,
    "characters": 25,
    "cost_cents": 0.11,
    "currency": "eur",
    "model_id": "kugel-3",
}
IDLE_WARNING = (
    'Turn ended after 5s of inactivity. Send {"flush": true} to end a turn explicitly — it '
    "lowers latency and avoids this auto-flush."
)


def audio(idx: int, chunk_id: int = 0, samples: int = 4800, sr: int = 24000) -> dict[str, Any]:
    b64 = base64.b64encode(b"\x00\x00" * samples).decode()
    return {
        "audio": b64,
        "enc": "pcm_s16le",
        "idx": idx,
        "sr": sr,
        "samples": samples,
        "chunk_id": chunk_id,
    }


def frame_of(obj: dict[str, Any]) -> AudioFrame:
    return AudioFrame(
        obj["audio"], obj["enc"], obj["idx"], obj["sr"], obj["samples"], obj.get("chunk_id")
    )


def gen(chunk_id: int, text: str) -> dict[str, Any]:
    return {"generation_started": True, "chunk_id": chunk_id, "text": text}


def complete(chunk_id: int, secs: float, gen_ms: float = 150) -> dict[str, Any]:
    return {"chunk_complete": True, "chunk_id": chunk_id, "audio_seconds": secs, "gen_ms": gen_ms}


def final(secs: float, chunks: int, frames: int) -> dict[str, Any]:
    return {
        "final": True,
        "total_audio_seconds": secs,
        "total_text_chunks": chunks,
        "total_audio_chunks": frames,
    }


def closed(secs: float, chunks: int, frames: int) -> dict[str, Any]:
    return {
        "session_closed": True,
        "total_audio_seconds": secs,
        "total_text_chunks": chunks,
        "total_audio_chunks": frames,
        "usage": USAGE,
    }


def graceful_turn(text: str, frames: int = 1) -> list[dict[str, Any]]:
    secs = round(0.2 * frames, 6)
    return [
        gen(0, text),
        *(audio(i) for i in range(frames)),
        complete(0, secs),
        final(secs, 1, frames),
        closed(secs, 1, frames),
    ]


class H:
    """A StreamClientSession with a manual clock and JSON helpers."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("idle_flush_guard", None)
        self.s = StreamClientSession(**kwargs)
        self.now = 0.0

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.s.messages_to_send()]

    def feed(self, *frames: dict[str, Any] | str) -> None:
        for f in frames:
            self.s.receive_message(f if isinstance(f, str) else json.dumps(f), self.now)

    def events(self) -> list[Any]:
        return list(self.s.events())


USAGE_OBJ = Usage(1.2, 25, 0.11, "eur", False, "kugel-3")


# =============================================================================================
# Appendix A transcripts


def test_a1_two_turns_second_with_a_different_voice() -> None:
    h = H(**CONFIG)
    assert h.s.send_text("Hello, ", h.now) == 0
    assert h.s.send_text("this is streaming.", h.now) == 0
    assert h.sent() == [{"text": "Hello, ", **CONFIG}, {"text": "this is streaming."}]
    a0, a1 = audio(0), audio(1)
    h.feed(gen(0, "Hello, this is streaming."), a0)
    assert h.s.flush(h.now) == 0
    assert h.sent() == [{"flush": True}]
    h.feed(a1, complete(0, 1.2), final(1.2, 1, 2), closed(1.2, 1, 2))
    assert h.events() == [
        TurnStarted(0),
        GenerationStarted(0, 0, "Hello, this is streaming."),
        AudioChunk(0, frame_of(a0), 0.0),
        AudioChunk(0, frame_of(a1), pytest.approx(0.2)),
        ChunkComplete(0, 0, 1.2, 150.0),
        TurnFinal(0, 1.2, 1, 2),
        TurnClosed(0, USAGE_OBJ, 1.2, 1, 2),
    ]
    h.s.update_config(voice_id=1072)
    assert h.s.send_text("New turn, different voice.", h.now, flush=True) == 1
    assert h.sent() == [
        {"text": "New turn, different voice.", **CONFIG, "voice_id": 1072, "flush": True}
    ]
    h.feed(*graceful_turn("New turn, different voice."))
    evs = h.events()
    assert evs[0] == TurnStarted(1)
    assert isinstance(evs[-1], TurnClosed)
    assert evs[-1].turn == 1
    assert {e.turn for e in evs} == {1}
    h.s.close_socket(h.now)
    assert h.sent() == [{"close_socket": True}]
    with pytest.raises(LocalProtocolError):
        h.s.send_text("more", h.now)
    assert h.s.dropped_frames == 0


def test_a2_barge_in() -> None:
    h = H(voice_id=1071)
    h.s.send_text("This is a very long answer that the user ", h.now)
    assert h.sent() == [{"text": "This is a very long answer that the user ", "voice_id": 1071}]
    a0, a1 = audio(0), audio(1)
    h.feed(gen(0, "This is a very long answer"), a0, a1)
    assert h.s.cancel(h.now) == (0,)
    assert h.sent() == [{"cancel": True}]
    h.feed(audio(2))  # already in transit: discarded
    h.feed({"interrupted": True})  # no final, no session_closed
    assert h.events() == [
        TurnStarted(0),
        GenerationStarted(0, 0, "This is a very long answer"),
        AudioChunk(0, frame_of(a0), 0.0),
        AudioChunk(0, frame_of(a1), pytest.approx(0.2)),
        Interrupted(0),
    ]
    assert h.s.dropped_frames == 1
    assert h.s.send_text("Sure, what would you like instead?", h.now, flush=True) == 1
    # config is re-sent after a cancel
    assert h.sent() == [
        {"text": "Sure, what would you like instead?", "voice_id": 1071, "flush": True}
    ]
    b0 = audio(0)
    h.feed(gen(0, "Sure, what would you like instead?"), b0)
    assert h.events() == [
        TurnStarted(1),
        GenerationStarted(1, 0, "Sure, what would you like instead?"),
        AudioChunk(1, frame_of(b0), 0.0),
    ]


def test_a3_server_idle_auto_flush_warning() -> None:
    h = H(**CONFIG)
    h.s.send_text("Let me check that for you", h.now)
    h.sent()
    h.now = 5.0
    h.feed({"warning": IDLE_WARNING})
    h.feed(*graceful_turn("Let me check that for you"))
    evs = h.events()
    assert evs[:2] == [TurnStarted(0), Warning(IDLE_WARNING, 0)]
    assert isinstance(evs[-1], TurnClosed)
    assert evs[-1].turn == 0
    assert isinstance(evs[-2], TurnFinal)
    # The server ended the turn: no open turn, flushing it again is an error, new text -> turn 1
    assert h.s.current_turn is None
    with pytest.raises(LocalProtocolError):
        h.s.flush(h.now)
    assert h.s.send_text("Next", h.now) == 1


def test_warning_with_no_turn_is_delivered() -> None:
    h = H()
    h.feed({"warning": "something"})
    assert h.events() == [Warning("something", None)]


# =============================================================================================
# config, flush and turn numbering


def test_config_only_on_first_frame_then_resent_after_changes() -> None:
    h = H(**CONFIG)
    h.s.send_text("a", h.now)
    h.s.send_text("b", h.now, flush=True)
    h.s.send_text("c", h.now)  # turn 1: no config change, nothing re-sent
    assert h.sent() == [{"text": "a", **CONFIG}, {"text": "b", "flush": True}, {"text": "c"}]
    # update_config: re-sent (merged) on the next turn's first frame only
    h.s.update_config(speed=1.1)
    h.s.send_text("d", h.now)  # still turn 1 (open): config waits for the next turn
    h.s.flush(h.now)
    h.s.send_text("e", h.now)
    h.s.send_text("f", h.now)
    assert h.sent() == [
        {"text": "d"},
        {"flush": True},
        {"text": "e", **CONFIG, "speed": 1.1},
        {"text": "f"},
    ]
    assert h.s.config.speed == 1.1
    # end_turn sends close and re-sends config next time
    assert h.s.end_turn(h.now) == 2
    h.s.send_text("g", h.now)
    assert h.sent() == [{"close": True}, {"text": "g", **CONFIG, "speed": 1.1}]
    # cancel re-sends config next time
    h.s.cancel(h.now)
    h.s.send_text("h", h.now)
    assert h.sent() == [{"cancel": True}, {"text": "h", **CONFIG, "speed": 1.1}]


def test_end_turn_without_open_turn_is_a_noop() -> None:
    h = H()
    assert h.s.end_turn(h.now) is None
    assert h.sent() == []


def test_empty_text_is_not_sent_and_starts_nothing() -> None:
    h = H(voice_id=1)
    assert h.s.send_text("", h.now) is None
    assert h.sent() == []
    assert h.events() == []
    h.s.send_text("x", h.now)
    assert h.s.send_text("", h.now, flush=True) == 0
    assert h.sent() == [{"text": "x", "voice_id": 1}, {"flush": True}]


def test_second_flush_on_same_turn_is_local_error() -> None:
    h = H()
    with pytest.raises(LocalProtocolError):
        h.s.flush(h.now)  # nothing to flush yet
    h.s.send_text("hi", h.now)
    h.s.flush(h.now)
    with pytest.raises(LocalProtocolError, match="already flushed"):
        h.s.flush(h.now)
    assert h.sent() == [{"text": "hi"}, {"flush": True}]


def test_text_type_checked() -> None:
    h = H()
    with pytest.raises(LocalProtocolError):
        h.s.send_text(b"bytes", h.now)  # type: ignore[arg-type]


def test_text_after_flush_starts_next_turn() -> None:
    h = H()
    assert h.s.send_text("one", h.now, flush=True) == 0
    assert h.s.current_turn is None
    assert h.s.send_text("two", h.now) == 1
    assert h.s.current_turn == 1
    assert h.events() == [TurnStarted(0), TurnStarted(1)]


def test_turn_matching_by_order_across_three_turns() -> None:
    h = H(voice_id=1)
    texts = ["First turn.", "Second turn.", "Third turn."]
    for t in texts:
        h.s.send_text(t, h.now, flush=True)
    h.sent()
    assert h.events() == [TurnStarted(0), TurnStarted(1), TurnStarted(2)]
    for i, t in enumerate(texts):
        h.feed(*graceful_turn(t, frames=i + 1))
    evs = h.events()
    by_turn: dict[int, list[Any]] = defaultdict(list)
    for e in evs:
        by_turn[e.turn].append(e)
    for i, t in enumerate(texts):
        seq = by_turn[i]
        assert seq[0] == GenerationStarted(i, 0, t)
        assert [e.idx for e in seq if isinstance(e, AudioChunk)] == list(range(i + 1))
        assert isinstance(seq[-2], TurnFinal)
        assert isinstance(seq[-1], TurnClosed)
    # terminal order follows turn order
    assert [e.turn for e in evs if isinstance(e, TurnClosed)] == [0, 1, 2]


def test_legacy_server_without_final() -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    h.feed(gen(0, "x"), audio(0), complete(0, 0.2), {"session_closed": True})
    evs = h.events()
    assert evs[-1] == TurnClosed(0, None)


def test_stray_output_with_no_turn_is_dropped() -> None:
    h = H()
    h.feed(audio(0), gen(0, "x"), final(0, 0, 0), {"session_closed": True})
    assert h.events() == []
    assert h.s.dropped_frames == 4


def test_unknown_frames_counted() -> None:
    h = H()
    h.feed({"brand_new_frame": True})
    h.s.send_text("x", h.now)
    h.feed({"context_created": True, "context_id": "c"})
    assert h.s.unknown_frames == 2
    assert h.events() == [TurnStarted(0)]


def test_bad_frame_raises_remote_protocol_error() -> None:
    h = H()
    with pytest.raises(RemoteProtocolError):
        h.feed("not json")
    with pytest.raises(RemoteProtocolError) as exc_info:
        h.feed({"audio": "AAAA", "idx": -1})
    assert exc_info.value.field == "idx"


def test_server_error_reports_head_turn() -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    # (a voice error would end the turn: see tests/transports/test_refused_turn.py)
    h.feed({"error": "bad markup", "error_code": "VALIDATION_ERROR", "code": 400})
    h.feed({"error": "Model overloaded", "error_code": "MODEL_UNAVAILABLE", "code": 503,
            "request_id": "r1", "retry_after": 2})  # fmt: skip
    evs = h.events()[1:]
    assert evs == [
        ServerError(ErrorCode.VALIDATION_ERROR, "bad markup", 400, "VALIDATION_ERROR", None, 0),
        ServerError(ErrorCode.MODEL_UNAVAILABLE, "Model overloaded", 503, "MODEL_UNAVAILABLE",
                    None, 0, "r1", 2.0, fatal=True),
    ]  # fmt: skip


# =============================================================================================
# barge-in


def test_cancel_drops_audio_before_interrupted_and_next_turn_flows() -> None:
    h = H()
    h.s.send_text("Long answer. ", h.now)
    h.feed(gen(0, "Long answer."), audio(0))
    h.events()
    h.s.cancel(h.now)
    # everything the server still had in flight for turn 0
    h.feed(audio(1), {"word_timestamps": [], "chunk_id": 0}, complete(0, 0.4),
           final(0.4, 1, 2), closed(0.4, 1, 2))  # fmt: skip
    assert h.events() == []
    h.s.send_text("Okay.", h.now, flush=True)
    assert h.events() == [TurnStarted(1)]
    h.feed({"interrupted": True})
    assert h.events() == [Interrupted(0)]
    h.feed(*graceful_turn("Okay."))
    evs = h.events()
    assert [type(e) for e in evs] == [
        GenerationStarted, AudioChunk, ChunkComplete, TurnFinal, TurnClosed
    ]  # fmt: skip
    assert {e.turn for e in evs} == {1}
    assert h.s.dropped_frames == 5


def test_cancel_covers_draining_and_open_turns() -> None:
    h = H()
    h.s.send_text("first", h.now, flush=True)
    h.s.send_text("second", h.now)
    assert h.s.cancel(h.now) == (0, 1)
    h.feed(gen(0, "first"), audio(0), {"interrupted": True})
    evs = h.events()
    assert evs == [TurnStarted(0), TurnStarted(1), Interrupted(0), Interrupted(1)]


def test_cancel_with_nothing_in_flight() -> None:
    h = H()
    assert h.s.cancel(h.now) == ()
    h.feed({"interrupted": True})
    assert h.events() == [Interrupted(None)]


def test_cancel_after_final_before_session_closed() -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    h.feed(gen(0, "x"), audio(0), complete(0, 0.2), final(0.2, 1, 1))
    h.s.cancel(h.now)
    h.feed(closed(0.2, 1, 1), {"interrupted": True})
    evs = h.events()
    assert evs[-1] == Interrupted(0)
    assert not any(isinstance(e, TurnClosed) for e in evs)


def test_interrupted_without_cancel_is_dropped() -> None:
    h = H()
    h.feed({"interrupted": True})
    assert h.events() == []
    assert h.s.dropped_frames == 1


def test_cancel_ack_quiet_timeout() -> None:
    h = H(cancel_timeout=5.0)
    h.s.send_text("x", h.now)
    h.now = 10.0
    h.s.cancel(h.now)
    assert h.s.next_deadline() == 15.0
    h.now = 12.0
    h.feed(audio(0))  # the quiet timer restarts on every frame
    assert h.s.next_deadline() == 17.0
    h.s.handle_timeout(16.9)
    assert h.events() == [TurnStarted(0)]
    h.s.handle_timeout(17.0)
    evs = h.events()
    assert evs[0] == Interrupted(0, acknowledged=False)
    assert [type(e).__name__ for e in evs[1:]] == ["Diagnostic"]
    assert h.s.next_deadline() is None
    # the cancel is abandoned: a later turn flows, and the late ack (wherever it comes) is
    # absorbed without disturbing it
    h.s.send_text("y", h.now, flush=True)
    turn = graceful_turn("y", frames=2)
    h.feed(*turn[:2], {"interrupted": True}, *turn[2:])
    evs = h.events()
    assert evs[0] == TurnStarted(1)
    assert [e.frame.idx for e in evs if isinstance(e, AudioChunk)] == [0, 1]
    assert isinstance(evs[-1], TurnClosed) and evs[-1].turn == 1
    assert not any(isinstance(e, Interrupted) for e in evs)
    assert h.s.dropped_frames == 2  # the audio before the timeout, and the late ack


def test_unacknowledged_cancel_does_not_wedge_later_turns() -> None:
    """A server that never answers a cancel: after the cancel timeout every later turn
    delivers its audio, final and session_closed (it used to hang, all of it dropped)."""
    h = H(cancel_timeout=5.0)
    h.s.send_text("x", h.now, flush=True)
    h.feed(gen(0, "x"), audio(0))
    h.s.cancel(h.now)
    h.s.handle_timeout(h.now + 5.0)
    assert isinstance(h.events()[-2], Interrupted)
    for n in (1, 2, 3):
        h.now += 6.0
        assert h.s.send_text(f"turn {n}.", h.now, flush=True) == n
        h.feed(*graceful_turn(f"turn {n}.", frames=2))
        evs = h.events()
        assert evs[0] == TurnStarted(n)
        assert sum(isinstance(e, AudioChunk) for e in evs) == 2
        assert isinstance(evs[-2], TurnFinal) and isinstance(evs[-1], TurnClosed)
    assert h.s.next_deadline() is None


def test_turn_answered_while_a_cancel_waits_ends_when_it_is_abandoned() -> None:
    """Output that arrives while a cancel waits for its ack is dropped (it may be the cancelled
    turn's). A turn sent meanwhile may have lost its output that way: when the cancel is
    abandoned it ends with Interrupted(acknowledged=False) instead of waiting forever, and the
    turns after it flow."""
    h = H(cancel_timeout=5.0)
    h.s.send_text("x", h.now, flush=True)
    h.s.cancel(h.now)
    h.now = 1.0
    h.s.send_text("y", h.now, flush=True)
    h.feed(*graceful_turn("y"))  # the cancelled turn's or y's? dropped either way
    assert h.events() == [TurnStarted(0), TurnStarted(1)]
    h.s.handle_timeout(h.now + 5.0)
    evs = h.events()
    assert [e for e in evs if isinstance(e, Interrupted)] == [
        Interrupted(0, acknowledged=False),
        Interrupted(1, acknowledged=False),
    ]
    assert h.s.send_text("z", h.now, flush=True) == 2
    h.feed(*graceful_turn("z"))
    assert isinstance(h.events()[-1], TurnClosed)


def test_cancel_timeout_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        StreamClientSession(cancel_timeout=0)


# =============================================================================================
# timers


def test_idle_flush_guard_flushes_after_4_5_s() -> None:
    h = H(idle_flush_guard=4.5)
    assert h.s.next_deadline() is None
    h.s.send_text("a", 0.0)
    assert h.s.next_deadline() == 4.5
    h.s.send_text("b", 2.0)  # text resets it
    assert h.s.next_deadline() == 6.5
    h.sent()
    h.events()
    h.s.handle_timeout(6.4)
    assert h.sent() == []
    h.s.handle_timeout(6.5)
    assert h.sent() == [{"flush": True}]
    evs = h.events()
    assert len(evs) == 1
    assert isinstance(evs[0], Diagnostic)
    assert evs[0].turn == 0
    assert h.s.next_deadline() is None
    assert h.s.current_turn is None
    # the server's answer is matched to turn 0, next text is turn 1
    assert h.s.send_text("c", 7.0) == 1


def test_idle_flush_guard_default_is_4_5() -> None:
    s = StreamClientSession()
    s.send_text("a", 1.0)
    assert s.next_deadline() == 5.5


def test_idle_flush_guard_disabled() -> None:
    h = H(idle_flush_guard=None)
    h.s.send_text("a", 0.0)
    assert h.s.next_deadline() is None
    h.sent()
    h.s.handle_timeout(100.0)
    assert h.sent() == []
    assert h.s.current_turn == 0


# =============================================================================================
# word timestamps


def test_word_timestamps_turn_relative_offsets() -> None:
    h = H(word_timestamps=True)
    h.s.send_text("Hello world. Bye now.", h.now, flush=True)
    # chunk 0: two frames of 0.2 s = 0.4 s; chunk 1 starts at 400 ms of the turn
    h.feed(gen(0, "Hello world."), audio(0, 0), audio(1, 0), complete(0, 0.4),
           gen(1, "Bye now."), audio(2, 1, samples=2400))  # fmt: skip
    h.feed(
        {"word_timestamps": [
            {"word": "Hello", "start_ms": 0, "end_ms": 150, "char_start": 0, "char_end": 5},
            {"word": "world", "start_ms": 170, "end_ms": 380, "char_start": 6, "char_end": 11},
        ], "chunk_id": 0},  # late, after chunk 1's audio began
        {"word_timestamps": [
            {"word": "Bye", "start_ms": 0, "end_ms": 40, "char_start": 0, "char_end": 3},
            {"word": "now", "start_ms": 50, "end_ms": 90, "char_start": 4, "char_end": 7},
        ], "chunk_id": 1},
    )  # fmt: skip
    h.feed(complete(1, 0.1), final(0.5, 2, 3), closed(0.5, 2, 3))
    evs = h.events()
    chunks = [e for e in evs if isinstance(e, AudioChunk)]
    assert [c.offset_s for c in chunks] == pytest.approx([0.0, 0.2, 0.4])
    wts = [e for e in evs if isinstance(e, WordTimestamps)]
    assert [w.offset_ms for w in wts] == pytest.approx([0.0, 400.0])
    assert wts[0].words[1] == WordTimestamp("world", 170, 380, 6, 11, 1.0)
    assert [(w.word, w.start_ms, w.end_ms) for w in wts[1].turn_words] == [
        ("Bye", 400.0, 440.0),
        ("now", 450.0, 490.0),
    ]
    assert wts[1].words[0].start_ms == 0  # wire times stay chunk-relative


# =============================================================================================
# restart close and replay


def _turn_with_partial_audio(h: H) -> None:
    h.s.send_text("Hello there. ", h.now)
    h.s.send_text("How are you today?", h.now, flush=True)
    h.feed(gen(0, "Hello there."), audio(0, 0), complete(0, 0.2),
           gen(1, "How are you today?"), audio(1, 1))  # fmt: skip


def test_restart_1012_reports_replay_info() -> None:
    h = H(voice_id=5)
    _turn_with_partial_audio(h)
    h.s.send_text("Second turn ", h.now)
    h.s.send_text("text.", h.now)
    h.events()
    h.s.connection_lost(1012, "service restart", 3.0)
    evs = h.events()
    replays = (
        TurnReplay(0, "Hello there. How are you today?", True, False, "How are you today?"),
        TurnReplay(1, "Second turn text.", False, True, "Second turn text."),
    )
    assert evs == [
        TurnAborted(0, 1012, True, "How are you today?"),
        TurnAborted(1, 1012, False, "Second turn text."),
        ConnectionTerminated(1012, "service restart", True, replays),
    ]
    # the session is dead: commands fail, frames are dropped
    with pytest.raises(LocalProtocolError):
        h.s.send_text("x", h.now)
    h.feed(audio(2, 1))
    assert h.events() == []
    assert h.s.terminated
    h.s.connection_lost(1006, "", 4.0)  # idempotent
    assert h.events() == []
    # replay the replayable turn on a fresh session: exact text, flush as it was
    fresh = H(voice_id=5)
    assert fresh.s.replay(replays[1], 5.0) == 0
    assert fresh.sent() == [{"text": "Second turn text.", "voice_id": 5}]
    fresh.s.replay(TurnReplay(0, "abc", True, True, "abc"), 5.0)


@pytest.mark.parametrize(("code", "restarting"), [(1013, True), (1000, False), (None, False)])
def test_close_codes(code: int | None, restarting: bool) -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    h.events()
    h.s.connection_lost(code, "", 1.0)
    evs = h.events()
    assert evs[0] == TurnAborted(0, code, False, "x")
    assert isinstance(evs[-1], ConnectionTerminated)
    assert evs[-1].restarting is restarting


def test_connection_lost_during_cancel_finishes_it() -> None:
    h = H()
    h.s.send_text("x", h.now)
    h.s.cancel(h.now)
    h.events()
    h.s.connection_lost(1012, "", 1.0)
    evs = h.events()
    assert evs == [Interrupted(0, acknowledged=False), ConnectionTerminated(1012, "", True, ())]


def test_unspoken_text_helper() -> None:
    assert unspoken_text("Hello there. How are you?", ["Hello there."]) == "How are you?"
    assert unspoken_text("Hello  there.How", ["Hello there."]) == "How"
    assert unspoken_text("abc", ["abc"]) == ""
    # chunk texts that do not line up (normalised by the server): nothing is declared spoken
    assert unspoken_text("I have 5 apples.", ["I have five apples."]) == "I have 5 apples."


# =============================================================================================
# update_settings and spell diagnostics


def test_update_settings_sent_and_acknowledged() -> None:
    h = H()
    h.s.update_settings(h.now, cfg_scale=9, language="de")
    assert h.sent() == [{"update_settings": {"cfg_scale": 2.5, "language": "de"}}]
    settings_ = {"cfg_scale": 2.5, "temperature": None, "max_new_tokens": 2048,
                 "language": "de", "normalize": True, "speed": 1.0}  # fmt: skip
    h.feed({"settings_updated": True, "settings": settings_})
    assert h.events() == [SettingsUpdated(settings_)]


@pytest.mark.parametrize(
    "bad", [{"voice_id": 3}, {"sample_rate": 8000}, {"output_format": "pcm_8000"}, {"speed": 2}]
)
def test_update_settings_forbidden_or_invalid_is_local_error(bad: dict[str, Any]) -> None:
    h = H()
    with pytest.raises(LocalProtocolError) as exc_info:
        h.s.update_settings(h.now, **bad)
    assert next(iter(bad)) in exc_info.value.message
    with pytest.raises(LocalProtocolError):
        h.s.update_settings(h.now)
    assert h.sent() == []


def test_settings_error_does_not_touch_the_turn() -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    h.s.update_settings(h.now, speed=1.1)
    h.feed({"error": "Invalid settings update: speed: out of range",
            "error_code": "VALIDATION_ERROR", "code": 400})  # fmt: skip
    h.feed(*graceful_turn("x"))
    evs = h.events()
    assert isinstance(evs[-1], TurnClosed)
    assert not any(isinstance(e, ServerError) and e.turn == 0 for e in evs)


def test_settings_error_is_surfaced() -> None:
    h = H()
    h.s.update_settings(h.now, speed=1.1)
    h.feed({"error": "Invalid settings update: speed: out of range",
            "error_code": "VALIDATION_ERROR", "code": 400})  # fmt: skip
    evs = h.events()
    assert len(evs) == 1
    assert isinstance(evs[0], ServerError)
    assert evs[0].code is ErrorCode.VALIDATION_ERROR
    assert evs[0].turn is None


def test_spell_split_across_tokens_language_unset() -> None:
    h = H(normalize=True)
    h.s.send_text("My code is <sp", h.now)
    assert h.events() == [TurnStarted(0)]
    h.s.send_text("ell>AB12</spell>", h.now)
    evs = h.events()
    assert len(evs) == 1
    assert isinstance(evs[0], Diagnostic)
    assert evs[0].turn == 0
    h.s.send_text(" and <spell>again</spell>", h.now)  # once per turn
    assert h.events() == []
    h.s.flush(h.now)
    h.s.send_text("<spell>X</spell>", h.now)  # next turn: again
    evs = h.events()
    assert [type(e) for e in evs] == [TurnStarted, Diagnostic]
    assert evs[1].turn == 1


def test_spell_char_by_char() -> None:
    h = H()
    for ch in "x <spell>":
        h.s.send_text(ch, h.now)
    assert sum(isinstance(e, Diagnostic) for e in h.events()) == 1


def test_spell_normalize_false() -> None:
    h = H(language="en", normalize=False)
    h.s.send_text("<spell>A</spell>", h.now)
    assert sum(isinstance(e, Diagnostic) for e in h.events()) == 1


def test_spell_with_language_and_normalize_is_quiet() -> None:
    h = H(language="en", normalize=True)
    h.s.send_text("<sp", h.now)
    h.s.send_text("ell>A</spell>", h.now)
    assert h.events() == [TurnStarted(0)]
    h2 = H(language="de")  # normalize unset = server default true
    h2.s.send_text("<spell>A</spell>", h2.now)
    assert h2.events() == [TurnStarted(0)]


# =============================================================================================
# Property: a scripted fake server, random delivery batches, random cancels


class FakeStreamServer:
    """A minimal /ws/tts/stream server per REFERENCE §3.3/§4/§7, written for this test.

    Text is buffered per turn; a flush schedules the turn's frames (3 words per text chunk,
    one audio frame per word, word timestamps of a chunk arriving after the next chunk's first
    audio). ``produce`` moves scheduled frames onto the wire; a cancel discards everything not
    yet on the wire and appends ``interrupted`` (frames already on the wire still arrive first).
    """

    def __init__(self) -> None:
        self.buffer: list[str] | None = None
        self.scheduled: deque[dict[str, Any]] = deque()
        self.wire: deque[str] = deque()
        self.turn_chunks: list[list[str]] = []  # chunk texts per server turn, in order

    def receive(self, raw: str) -> None:
        msg = json.loads(raw)
        if msg.get("cancel"):
            self.buffer = None
            self.scheduled.clear()
            self.wire.append(json.dumps({"interrupted": True}))
            return
        text = msg.get("text")
        if text:
            if self.buffer is None:
                self.buffer = []
            self.buffer.append(text)
        if (msg.get("flush") or msg.get("close")) and self.buffer is not None:
            self._schedule("".join(self.buffer))
            self.buffer = None

    def _schedule(self, text: str) -> None:
        words = text.split()
        chunks = [words[i : i + 3] for i in range(0, len(words), 3)]
        self.turn_chunks.append([" ".join(c) for c in chunks])
        per_chunk: list[list[dict[str, Any]]] = []
        idx = 0
        total = 0.0
        for cid, chunk in enumerate(chunks):
            frames: list[dict[str, Any]] = [gen(cid, " ".join(chunk))]
            t_ms = 0.0
            wts = []
            for w in chunk:
                samples = 2400 * (1 + (idx % 3))
                frames.append(audio(idx, cid, samples=samples))
                dur = samples / 24.0
                wts.append({"word": w, "start_ms": t_ms, "end_ms": t_ms + dur,
                            "char_start": 0, "char_end": len(w)})  # fmt: skip
                t_ms += dur
                idx += 1
            total += t_ms / 1000
            per_chunk.append([*frames, {"word_timestamps": wts, "chunk_id": cid}])
        out: list[dict[str, Any]] = []
        for cid, frames in enumerate(per_chunk):
            wt = frames.pop()
            out.extend(frames)
            if cid + 1 < len(per_chunk):
                # late alignment: after the next chunk's first audio frame
                nxt = per_chunk[cid + 1]
                per_chunk[cid + 1] = [nxt[0], nxt[1], wt, *nxt[2:]]
            else:
                out.append(wt)
            out.append(complete(cid, round(t_ms / 1000, 6)))
        out.append(final(total, len(chunks), idx))
        out.append(closed(total, len(chunks), idx))
        self.scheduled.extend(out)

    def produce(self, k: int) -> None:
        for _ in range(min(k, len(self.scheduled))):
            self.wire.append(json.dumps(self.scheduled.popleft()))


TOKENS = st.sampled_from(
    ["Hello", " world", ".", " How", " are", " you", "?", " ", "a b c d", "x", " Yes."]
)
ACTIONS = st.one_of(
    st.tuples(st.just("text"), TOKENS, st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("produce"), st.integers(1, 8)),
    st.tuples(st.just("deliver"), st.integers(1, 8)),
    st.tuples(st.just("cancel")),
)


def _run_script(actions: list[tuple[Any, ...]]) -> None:
    client = StreamClientSession(voice_id=1, idle_flush_guard=None)
    server = FakeStreamServer()
    events: list[Any] = []
    cancelled_at: dict[int, int] = {}  # turn -> len(events) when cancel() returned it
    sent_text: dict[int, list[str]] = defaultdict(list)
    now = 0.0

    def pump_client() -> None:
        for m in client.messages_to_send():
            server.receive(m)
        events.extend(client.events())

    def deliver(k: int) -> None:
        for _ in range(min(k, len(server.wire))):
            client.receive_message(server.wire.popleft(), now)
            events.extend(client.events())

    for action in actions:
        now += 0.01
        kind = action[0]
        if kind == "text":
            turn = client.send_text(action[1], now, flush=action[2])
            assert turn is not None
            sent_text[turn].append(action[1])
        elif kind == "flush":
            if client.current_turn is None:
                with pytest.raises(LocalProtocolError):
                    client.flush(now)
            else:
                client.flush(now)
        elif kind == "produce":
            server.produce(action[1])
        elif kind == "deliver":
            deliver(action[1])
        elif kind == "cancel":
            events.extend(client.events())
            for t in client.cancel(now):
                cancelled_at[t] = len(events)
        pump_client()
    # finish: flush the open turn, then let everything run to the end
    if client.current_turn is not None:
        client.flush(now)
    pump_client()
    server.produce(10**6)
    deliver(10**6)
    assert not server.wire

    started = [e.turn for e in events if isinstance(e, TurnStarted)]
    assert started == list(range(len(started)))
    assert set(sent_text) == set(started)
    terminal_types = (TurnClosed, Interrupted, TurnAborted)
    terminals: dict[int, int] = {}
    for pos, e in enumerate(events):
        if isinstance(e, terminal_types) and e.turn is not None:
            assert e.turn not in terminals, f"second terminal for turn {e.turn}"
            terminals[e.turn] = pos
    assert sorted(terminals) == started, "exactly one terminal per TurnStarted"
    assert not any(isinstance(e, TurnAborted | ServerError) for e in events)

    last_idx: dict[int, int] = {}
    last_word_ms: dict[int, float] = {}
    gen_texts: dict[int, list[str]] = defaultdict(list)
    for pos, e in enumerate(events):
        turn = getattr(e, "turn", None)
        if turn is None or isinstance(e, TurnStarted):
            continue
        assert pos <= terminals[turn], f"event after the terminal of turn {turn}: {e}"
        if isinstance(e, AudioChunk):
            assert pos < cancelled_at.get(turn, len(events) + 1), "audio after cancel()"
            assert e.idx > last_idx.get(turn, -1), "idx order"
            last_idx[turn] = e.idx
        elif isinstance(e, WordTimestamps):
            for w in e.turn_words:
                assert w.start_ms >= last_word_ms.get(turn, 0.0) - 1e-6
                assert w.end_ms >= w.start_ms
                last_word_ms[turn] = w.end_ms
        elif isinstance(e, GenerationStarted):
            gen_texts[turn].append(e.text)
        elif isinstance(e, Interrupted):
            assert turn in cancelled_at, "Interrupted for a turn never cancelled"

    # turns that were not cancelled completed gracefully with exactly their own text
    for turn in started:
        if turn in cancelled_at:
            assert isinstance(events[terminals[turn]], Interrupted)
            continue
        assert isinstance(events[terminals[turn]], TurnClosed)
        words = "".join(sent_text[turn]).split()
        assert " ".join(gen_texts[turn]).split() == words
        n_audio = sum(isinstance(e, AudioChunk) and e.turn == turn for e in events)
        assert n_audio == len(words)
        assert last_idx.get(turn, -1) == len(words) - 1
    assert not client._pending_cancels


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(ACTIONS, max_size=40))
def test_fake_server_random_script(actions: list[tuple[Any, ...]]) -> None:
    _run_script(actions)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.just("text"), TOKENS, st.booleans()), min_size=1, max_size=8),
    st.lists(st.sampled_from([("produce", 3), ("deliver", 2), ("deliver", 5)]), max_size=12),
    st.integers(0, 20),
    st.lists(st.sampled_from([("produce", 4), ("deliver", 3)]), max_size=12),
)
def test_fake_server_single_cancel(
    texts: list[tuple[Any, ...]],
    mid: list[tuple[Any, ...]],
    cancel_at: int,
    after: list[tuple[Any, ...]],
) -> None:
    """Text, then a batch of deliveries with exactly one cancel injected at a random point."""
    script: list[tuple[Any, ...]] = [*texts, *mid]
    script.insert(min(cancel_at, len(script)), ("cancel",))
    script += [("text", "After the cancel.", True), *after]
    _run_script(script)


def test_repeated_audio_idx_is_dropped_not_delivered_twice() -> None:
    """Duplicate idx values used to pass silently (the audio was played twice)."""
    h = H()
    h.s.send_text("x", h.now, flush=True)
    h.feed(gen(0, "x"), audio(0), audio(1), audio(1), audio(0), audio(2))
    evs = h.events()
    assert [e.frame.idx for e in evs if isinstance(e, AudioChunk)] == [0, 1, 2]
    diagnostics = [e for e in evs if type(e).__name__ == "Diagnostic"]
    assert len(diagnostics) == 1 and "idx 1" in diagnostics[0].message
    assert h.s.dropped_frames == 2
    # a server numbering idx per chunk (idx starts again at 0 with each chunk) is not affected
    h.feed(audio(0, chunk_id=1), audio(1, chunk_id=1))
    assert [e.frame.idx for e in h.events() if isinstance(e, AudioChunk)] == [0, 1]
    # a frame without idx is not checked
    no_idx = audio(0)
    del no_idx["idx"]
    h.feed(no_idx, no_idx)
    assert sum(isinstance(e, AudioChunk) for e in h.events()) == 2


def test_undecodable_audio_is_a_protocol_error_when_parsed() -> None:
    h = H()
    h.s.send_text("x", h.now, flush=True)
    with pytest.raises(RemoteProtocolError) as exc_info:
        h.feed({**audio(0), "audio": "!!!!"})
    assert exc_info.value.field == "audio"
    with pytest.raises(RemoteProtocolError) as exc_info:
        h.feed({**audio(1), "samples": 10**15})
    assert exc_info.value.field == "samples"
