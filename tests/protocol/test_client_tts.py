"""Client role of /ws/tts: Appendix A.5, queued requests, cancel, errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.protocol._client import TTSClientSession
from kugelwire.protocol._errors import LocalProtocolError
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ConnectionTerminated,
    Diagnostic,
    ErrorCode,
    GenerationStarted,
    Interrupted,
    RequestFinal,
    ServerError,
    SettingsUpdated,
    TurnAborted,
    TurnReplay,
    TurnStarted,
    Warning,
    WordTimestamps,
)
from kugelwire.protocol._messages import AudioFrame, Usage

USAGE = {"audio_seconds": 2.0, "characters": 31, "cost_cents": 0.18, "currency": "eur",
         "model_id": "kugel-3"}  # fmt: skip
USAGE_OBJ = Usage(2.0, 31, 0.18, "eur", False, "kugel-3")
DEBUG = {"original_text": "Hello, this is streaming audio.", "ttfa_ms": 42.1, "speed": 1.0}
FINAL = {"final": True, "chunks": 10, "total_samples": 48000, "dur_ms": 2000, "gen_ms": 150,
         "rtf": 0.075, "debug": DEBUG, "usage": USAGE}  # fmt: skip


def audio(idx: int, samples: int = 4800) -> dict[str, Any]:
    b64 = base64.b64encode(b"\x00\x00" * samples).decode()
    return {"audio": b64, "enc": "pcm_s16le", "idx": idx, "sr": 24000, "samples": samples,
            "chunk_id": 0}  # fmt: skip


def frame_of(obj: dict[str, Any]) -> AudioFrame:
    return AudioFrame(obj["audio"], obj["enc"], obj["idx"], obj["sr"], obj["samples"], 0)


class H:
    def __init__(self, **kwargs: Any) -> None:
        self.s = TTSClientSession(**kwargs)
        self.now = 0.0

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.s.messages_to_send()]

    def feed(self, *frames: dict[str, Any] | str) -> None:
        for f in frames:
            self.s.receive_message(f if isinstance(f, str) else json.dumps(f), self.now)

    def events(self) -> list[Any]:
        return list(self.s.events())


def test_a5_transcript() -> None:
    h = H(model_id="kugel-3", voice_id=1071)
    assert h.s.request("Hello, this is streaming audio.", h.now, cfg_scale=2.0) == 0
    assert h.sent() == [
        {"text": "Hello, this is streaming audio.", "model_id": "kugel-3", "voice_id": 1071,
         "cfg_scale": 2.0}
    ]  # fmt: skip
    frames = [audio(i) for i in range(3)]
    h.feed(*frames, FINAL)
    assert h.events() == [
        TurnStarted(0),
        AudioChunk(0, frame_of(frames[0]), 0.0),
        AudioChunk(0, frame_of(frames[1]), pytest.approx(0.2)),
        AudioChunk(0, frame_of(frames[2]), pytest.approx(0.4)),
        RequestFinal(0, 10, 48000, 2000.0, 150.0, 0.075, USAGE_OBJ, DEBUG),
    ]
    assert h.s.pending_requests == ()
    # per-request params are not sticky
    assert h.s.request("Next request on the same socket.", h.now) == 1
    assert h.sent() == [
        {"text": "Next request on the same socket.", "model_id": "kugel-3", "voice_id": 1071}
    ]
    assert h.s.pending_requests == (1,)


def test_requests_queued_and_matched_in_order() -> None:
    h = H(voice_id=1)
    for i in range(3):
        assert h.s.request(f"request {i}", h.now) == i
    assert h.s.pending_requests == (0, 1, 2)
    h.events()
    for i in range(3):
        h.feed(*(audio(k) for k in range(i + 1)),
               {"final": True, "chunks": i + 1, "usage": {**USAGE, "characters": i}})  # fmt: skip
    evs = h.events()
    finals = [e for e in evs if isinstance(e, RequestFinal)]
    assert [(f.turn, f.chunks, f.usage.characters if f.usage else None) for f in finals] == [
        (0, 1, 0),
        (1, 2, 1),
        (2, 3, 2),
    ]
    for i in range(3):
        assert [e.idx for e in evs if isinstance(e, AudioChunk) and e.turn == i] == list(
            range(i + 1)
        )
    assert h.s.pending_requests == ()


def test_other_output_frames_are_attributed() -> None:
    h = H()
    h.s.request("x y", h.now)
    h.feed(
        {"generation_started": True, "chunk_id": 0, "text": "x y"},
        {"word_timestamps": [{"word": "x", "start_ms": 0, "end_ms": 10}]},
        {"chunk_complete": True, "chunk_id": 0, "audio_seconds": 0.1},
        {"warning": "hm"},
        {"brand_new": 1},
        {"final": True},
    )
    evs = h.events()
    assert [type(e) for e in evs] == [
        TurnStarted, GenerationStarted, WordTimestamps, ChunkComplete, Warning, RequestFinal
    ]  # fmt: skip
    assert {e.turn for e in evs if hasattr(e, "turn")} == {0}
    assert evs[-1] == RequestFinal(0, None, None, None, None, None, None, None)
    assert h.s.unknown_frames == 1


def test_request_validation() -> None:
    h = H()
    for bad in ("", "   ", 5):
        with pytest.raises(LocalProtocolError):
            h.s.request(bad, h.now)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError) as exc_info:
        h.s.request("x", h.now, speed=2)
    assert exc_info.value.field == "speed"
    with pytest.raises(LocalProtocolError):
        h.s.request("x", h.now, bogus=1)
    assert h.sent() == []
    assert h.events() == []


def test_cancel_gives_interrupted_and_drops_in_flight_audio() -> None:
    h = H()
    h.s.request("first", h.now)
    h.s.request("second", h.now)
    h.feed(audio(0))
    h.events()
    assert h.s.cancel(h.now) == (0,)  # one return type for every session: the keys
    assert h.sent()[-1] == {"cancel": True}
    assert h.s.pending_requests == (1,)
    h.feed(audio(1), audio(2), {"interrupted": True})  # no final for a cancelled request
    assert h.events() == [Interrupted(0)]
    assert h.s.dropped_frames == 2
    a = audio(0)
    h.feed(a, {"final": True, "usage": USAGE})
    evs = h.events()
    assert evs[0] == AudioChunk(1, frame_of(a), 0.0)
    assert isinstance(evs[1], RequestFinal)
    assert evs[1].turn == 1


def test_cancel_with_nothing_in_flight() -> None:
    h = H()
    assert h.s.cancel(h.now) == ()
    h.feed({"interrupted": True})
    assert h.events() == [Interrupted(None)]


def test_cancel_ack_timeout() -> None:
    h = H(cancel_timeout=1.0)
    h.s.request("x", 0.0)
    h.s.cancel(0.5)
    h.events()
    assert h.s.next_deadline() == 1.5
    h.s.handle_timeout(1.5)
    evs = h.events()
    assert evs[0] == Interrupted(0, acknowledged=False)
    assert [type(e).__name__ for e in evs[1:]] == ["Diagnostic"]
    # the cancelled request is abandoned: the next one flows; the late ack is absorbed
    assert h.s.pending_requests == ()
    h.s.request("y", 2.0)
    h.feed(audio(0))
    h.feed({"interrupted": True})
    assert h.s.dropped_frames == 1
    assert h.s.pending_requests == (1,)
    h.feed(audio(1), {"final": True})
    assert [(type(e).__name__, e.turn) for e in h.events()] == [
        ("TurnStarted", 1), ("AudioChunk", 1), ("AudioChunk", 1), ("RequestFinal", 1)
    ]


def test_error_is_terminal_for_the_head_request() -> None:
    h = H()
    h.s.request("one", h.now)
    h.s.request("two", h.now)
    h.events()
    h.feed({"error": "Voice not found", "error_code": "NOT_FOUND", "code": 404,
            "request_id": "abc"})  # fmt: skip
    assert h.events() == [
        ServerError(ErrorCode.NOT_FOUND, "Voice not found", 404, "NOT_FOUND", None, 0, "abc")
    ]
    assert h.s.pending_requests == (1,)
    h.feed(audio(0), {"final": True})
    evs = h.events()
    assert [e.turn for e in evs] == [1, 1]


def test_unknown_error_code_and_fatal_flag() -> None:
    h = H()
    h.s.request("x", h.now)
    h.events()
    h.feed({"error": "weird", "error_code": "SOMETHING_NEW", "code": 500})
    h.feed({"error": "Rate limit exceeded", "error_code": "RATE_LIMITED", "code": 429,
            "retry_after": 5})  # fmt: skip
    evs = h.events()
    assert evs[0].code is ErrorCode.UNKNOWN
    assert evs[0].raw_code == "SOMETHING_NEW"
    assert evs[0].turn == 0
    assert (evs[1].turn, evs[1].fatal, evs[1].retry_after) == (None, True, 5.0)


def test_settings_error_does_not_end_a_request() -> None:
    h = H()
    h.s.request("x", h.now)
    h.s.update_settings(h.now, temperature=0.3)
    assert h.sent()[-1] == {"update_settings": {"temperature": 0.3}}
    h.events()
    h.feed({"error": "Invalid settings update: temperature: out of range",
            "error_code": "VALIDATION_ERROR", "code": 400})  # fmt: skip
    assert h.s.pending_requests == (0,)
    h.feed(audio(0), FINAL)
    evs = h.events()
    assert [type(e) for e in evs if not isinstance(e, ServerError)] == [AudioChunk, RequestFinal]
    assert evs[-1].turn == 0


def test_invalid_settings_message_without_pending_update_is_a_request_error() -> None:
    h = H()
    h.s.request("x", h.now)
    h.events()
    h.feed({"error": "Invalid settings update: cfg_scale", "error_code": "VALIDATION_ERROR",
            "code": 400})  # fmt: skip
    evs = h.events()
    assert isinstance(evs[0], ServerError)
    assert evs[0].turn == 0
    assert h.s.pending_requests == ()


def test_settings_updated() -> None:
    h = H()
    h.s.update_settings(h.now, cfg_scale=1.5, temperature=0.3)
    assert h.sent() == [{"update_settings": {"cfg_scale": 1.5, "temperature": 0.3}}]
    h.feed({"settings_updated": True, "settings": {"cfg_scale": 1.5, "temperature": 0.3}})
    assert h.events() == [SettingsUpdated({"cfg_scale": 1.5, "temperature": 0.3})]
    with pytest.raises(LocalProtocolError, match="model_id"):
        h.s.update_settings(h.now, model_id="kugel-2")


def test_stray_frames_dropped() -> None:
    h = H()
    h.feed(audio(0), {"final": True})
    h.feed({"error": "x", "error_code": "INTERNAL_ERROR", "code": 500})
    evs = h.events()
    assert h.s.dropped_frames == 2
    assert [type(e) for e in evs] == [ServerError]
    assert evs[0].turn is None


def test_spell_diagnostic_uses_effective_request_config() -> None:
    h = H(normalize=True)
    h.s.request("code <spell>A1</spell>", h.now)
    h.s.request("code <spell>A1</spell>", h.now, language="en")
    evs = [e for e in h.events() if isinstance(e, Diagnostic)]
    assert [e.turn for e in evs] == [0]


def test_connection_lost_reports_requests() -> None:
    h = H()
    h.s.request("spoken partly", h.now)
    h.s.request("not started", h.now)
    h.feed(audio(0))
    h.events()
    h.s.connection_lost(1012, "", h.now)
    evs = h.events()
    assert evs == [
        TurnAborted(0, 1012, True, "spoken partly"),
        TurnAborted(1, 1012, False, "not started"),
        ConnectionTerminated(
            1012,
            "",
            True,
            (
                TurnReplay(0, "spoken partly", True, False, "spoken partly"),
                TurnReplay(1, "not started", True, True, "not started"),
            ),
        ),
    ]
    with pytest.raises(LocalProtocolError):
        h.s.request("x", h.now)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["req", "audio", "final", "cancel", "ack", "err"]), max_size=40))
def test_every_request_gets_exactly_one_terminal(script: list[str]) -> None:
    """Against an in-order fake server: one terminal per request, nothing after it."""
    h = H()
    server_queue: list[int] = []  # requests the fake server still owes
    wire: list[dict[str, Any]] = []
    idx = 0
    for step in script:
        if step == "req":
            server_queue.append(h.s.request("text", h.now))
        elif step == "audio" and server_queue:
            wire.append(audio(idx))
            idx += 1
        elif step == "final" and server_queue:
            server_queue.pop(0)
            wire.append({"final": True})
            idx = 0
        elif step == "err" and server_queue:
            server_queue.pop(0)
            wire.append({"error": "boom", "error_code": "INTERNAL_ERROR", "code": 500})
            idx = 0
        elif step == "cancel":
            # Deliver first so the head's final/error never crosses the cancel (that race is
            # test_cancel_crossing_the_heads_final).
            for frame in wire:
                h.feed(frame)
            wire.clear()
            h.s.cancel(h.now)
            if server_queue:
                server_queue.pop(0)
            wire.append({"interrupted": True})
            idx = 0
        elif step == "ack":
            for frame in wire:
                h.feed(frame)
            wire.clear()
    for frame in wire:
        h.feed(frame)
    while server_queue:
        server_queue.pop(0)
        h.feed({"final": True})
    evs = h.events()
    started = [e.turn for e in evs if isinstance(e, TurnStarted)]
    terminal: dict[int, int] = {}
    for pos, e in enumerate(evs):
        if isinstance(e, RequestFinal | Interrupted | ServerError) and e.turn is not None:
            assert e.turn not in terminal
            terminal[e.turn] = pos
    assert sorted(terminal) == started
    for pos, e in enumerate(evs):
        if isinstance(e, AudioChunk):
            assert pos < terminal[e.turn]
    assert h.s.pending_requests == ()


def test_cancel_crossing_the_heads_final() -> None:
    h = H()
    h.s.request("one", h.now)
    h.s.request("two", h.now)
    # The server finishes request 0 and starts request 1 while our cancel is in flight; the
    # cancel then abandons request 1 (the one generating) and is acknowledged.
    h.s.cancel(h.now)
    h.feed(audio(0), {"final": True, "usage": USAGE}, audio(0), {"interrupted": True})
    evs = h.events()
    assert Interrupted(0) in evs
    assert h.s.pending_requests == ()  # nothing more will ever arrive for request 1
    assert any(getattr(e, "turn", None) == 1 and not isinstance(e, TurnStarted) for e in evs)
