"""The invariants on hand-written transcripts: each one catches its break, and a correct
transcript of each endpoint passes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kugelwire.conformance import Entry, Transcript, check_transcript


def audio(idx: int, chunk: int = 0, samples: int = 240, ctx: str | None = None,
          **over: Any) -> dict[str, Any]:
    frame = {"audio": base64.b64encode(b"\0\0" * samples).decode(), "enc": "pcm_s16le",
             "idx": idx, "sr": 24000, "samples": samples, "chunk_id": chunk}
    if ctx is not None:
        frame["context_id"] = ctx
    return {**frame, **over}


def transcript(endpoint: str, *steps: tuple[str, dict[str, Any]]) -> Transcript:
    return Transcript(endpoint, [Entry(d, i / 1000, m) for i, (d, m) in enumerate(steps)])


S, R = "send", "recv"
TURN = [
    (S, {"text": "Hi. ", "flush": True}),
    (R, {"generation_started": True, "chunk_id": 0, "text": "Hi."}),
    (R, audio(0)), (R, audio(1)),
    (R, {"word_timestamps": [{"word": "Hi", "start_ms": 0, "end_ms": 20}], "chunk_id": 0}),
    (R, {"chunk_complete": True, "chunk_id": 0, "audio_seconds": 0.02, "gen_ms": 1}),
    (R, {"final": True, "total_audio_seconds": 0.02, "total_text_chunks": 1,
         "total_audio_chunks": 2}),
    (R, {"session_closed": True, "total_audio_seconds": 0.02, "total_text_chunks": 1,
         "total_audio_chunks": 2, "usage": {"audio_seconds": 0.02}}),
]


def names(t: Transcript) -> set[str]:
    return {v.invariant for v in check_transcript(t)}


def test_correct_transcripts_pass() -> None:
    assert check_transcript(transcript("/ws/tts/stream", *TURN, *TURN)) == []
    assert check_transcript(transcript(
        "/ws/tts/multi",
        (S, {"text": "Hi. ", "context_id": "a", "flush": True}),
        (R, {"context_created": True, "context_id": "a"}),
        (R, {"generation_started": True, "chunk_id": 0, "context_id": "a"}),
        (R, audio(0, ctx="a")),
        (R, {"chunk_complete": True, "chunk_id": 0, "context_id": "a", "audio_seconds": 0.01}),
        (R, {"final": True, "context_id": "a"}),
        (S, {"close_socket": True}),
        (R, {"final": True, "context_id": "a"}),
        (R, {"context_closed": True, "context_id": "a", "usage": {"audio_seconds": 0.01}}),
        (R, {"session_closed": True, "total_audio_seconds": 0.01}),
    )) == []
    assert check_transcript(transcript(
        "/ws/tts", (S, {"text": "Hi."}), (R, audio(0)), (R, audio(1)),
        (R, {"final": True, "chunks": 2, "total_samples": 480, "dur_ms": 20.0,
             "usage": {"audio_seconds": 0.02}}),
        (S, {"cancel": True}), (R, {"interrupted": True}),
    )) == []


@pytest.mark.parametrize(
    ("change", "invariant"),
    [
        (lambda t: [s for s in t if not s[1].get("final")], "frame-order"),
        (lambda t: [s if s[1].get("idx") != 1 else (R, audio(1, samples=480)) for s in t],
         "usage"),
        (lambda t: [s if s[1].get("idx") != 1 else (R, audio(0)) for s in t], "idx"),
        (lambda t: [s if s[1].get("idx") != 1 else (R, audio(1, chunk=5)) for s in t],
         "frame-order"),
        (lambda t: [s if s[1].get("idx") != 1 else (R, audio(1, sr=16000)) for s in t],
         "audio-format"),
        (lambda t: [s if s[1].get("idx") != 1 else (R, audio(1, samples=240, audio="AA=="))
                    for s in t], "audio-format"),
        (lambda t: [s if "word_timestamps" not in s[1] else
                    (R, {"word_timestamps": [{"word": "x", "start_ms": 0, "end_ms": 900}],
                         "chunk_id": 0}) for s in t], "word-timestamps"),
        (lambda t: [*t[:3], (R, {"generation_started": True, "chunk_id": 2}), *t[3:]],
         "chunk-id"),
        (lambda t: [*t, (R, {"error": "", "error_code": "X", "code": 400})], "error-frame"),
        (lambda t: [*t, (S, {"cancel": True})], "one-terminal"),
        (lambda t: [*t, (S, {"cancel": True}), (R, {"interrupted": True}), (R, audio(2))],
         "after-interrupted"),
        (lambda t: [s if not s[1].get("session_closed") else
                    (R, {**s[1], "usage": {"audio_seconds": 9.0}}) for s in t], "usage"),
    ],
)
def test_each_invariant_catches_its_break(change: Any, invariant: str) -> None:
    assert invariant in names(transcript("/ws/tts/stream", *change(list(TURN))))


def test_multi_frames_after_context_closed_and_session_closed() -> None:
    t = transcript(
        "/ws/tts/multi",
        (S, {"text": "Hi. ", "context_id": "a"}),
        (R, {"context_created": True, "context_id": "a"}),
        (S, {"context_id": "a", "close_context": True, "immediate": True}),
        (R, {"context_closed": True, "context_id": "a"}),
        (R, audio(0, ctx="a")),
        (R, {"session_closed": True}),
    )
    violations = check_transcript(t)
    assert {v.invariant for v in violations} == {"frame-order"}
    assert any("after its context_closed" in v.message for v in violations)
    assert any("session_closed without close_socket" in v.message for v in violations)


def test_tts_stats_must_match_the_audio() -> None:
    t = transcript("/ws/tts", (S, {"text": "Hi."}), (R, audio(0)),
                   (R, {"final": True, "chunks": 3, "total_samples": 1, "dur_ms": 99}))
    assert [v.invariant for v in check_transcript(t)] == ["usage"] * 3
