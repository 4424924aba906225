"""Server-session details that a mutation run of the table-driven sessions (2026-12-02,
fuzz/README.md) showed no test in tests/protocol pinned: the identity refusals (``model_id``,
``dictionary_ids``), the ``/ws/tts`` queue's character bound, ``debug.ttfa_ms`` counted from the
request's start, and a multi session's shutdown. Each asserts what a client sees on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kugelwire.protocol import (
    MultiServerSession,
    ServerLimits,
    StreamServerSession,
    SynthesisRequested,
    TTSServerSession,
)
from kugelwire.protocol.config import MODELS

_MODELS = ", ".join(m.id for m in MODELS)


def _send(session: Any, frame: dict[str, Any], now: float = 0.0) -> list[dict[str, Any]]:
    session.receive_message(json.dumps(frame), now)
    return [json.loads(m) for m in session.messages_to_send()]


def _requests(session: Any) -> list[SynthesisRequested]:
    return [e for e in session.events() if isinstance(e, SynthesisRequested)]


def _voiced(session: Any, frame: dict[str, Any]) -> dict[str, Any]:
    if isinstance(session, MultiServerSession):
        return {**frame, "context_id": "a", "voice_settings": {"voice_id": 1}}
    return {**frame, "voice_id": 1}


_SESSIONS = [StreamServerSession, MultiServerSession, TTSServerSession]


@pytest.mark.parametrize("make", _SESSIONS)
def test_an_unknown_model_id_is_refused_before_anything_applies(make: Any) -> None:
    session = make()
    out = _send(session, _voiced(session, {"text": "Hello there. ", "model_id": "nope"}))
    expected = {
        "error": f"model_id: unknown model 'nope' (one of {_MODELS})",
        "error_code": "VALIDATION_ERROR", "code": 400,
    }
    if make is MultiServerSession:
        expected["context_id"] = "a"
    assert out == [expected]
    assert _requests(session) == []  # nothing of the frame applied


@pytest.mark.parametrize("make", _SESSIONS)
def test_a_known_model_id_is_taken(make: Any) -> None:
    session = make()
    out = _send(session, _voiced(session, {"text": "Hello there. ", "model_id": MODELS[1].id,
                                           "flush": True}))
    assert not any("error" in frame for frame in out)
    (request,) = _requests(session)
    assert request.params.model_id == MODELS[1].id


@pytest.mark.parametrize("make", _SESSIONS)
def test_dictionary_ids_are_refused_by_a_local_server(make: Any) -> None:
    session = make()
    context = {"context_id": "a"} if make is MultiServerSession else {}
    out = _send(session, _voiced(session, {"text": "Hi. ", "dictionary_ids": [3, 4]}))
    assert out == [{"error": "dictionary_ids: requires project_id",
                    "error_code": "VALIDATION_ERROR", "code": 400, **context}]
    out = _send(session, _voiced(session, {"text": "Hi. ", "dictionary_ids": [3, 4],
                                           "project_id": 7}))
    assert out == [{"error": "Dictionary not found: 3, 4", "error_code": "VALIDATION_ERROR",
                    "code": 400, **context}]
    assert _requests(session) == []


def test_the_tts_queue_takes_exactly_max_queued_chars() -> None:
    t = TTSServerSession(limits=ServerLimits(max_queued_chars=10, max_queued_messages=5))
    assert _send(t, {"text": "speaking", "voice_id": 1}) == []  # starts: not queued
    assert _send(t, {"text": "abcde", "voice_id": 1}) == []
    assert _send(t, {"text": "fghij", "voice_id": 1}) == []  # 10 characters wait: the bound
    assert _send(t, {"text": "k", "voice_id": 1}) == [{
        "error": "queue full: at most 5 messages and 10 characters may wait for the current "
                 "request to finish",
        "error_code": "VALIDATION_ERROR", "code": 400,
    }]


def test_tts_ttfa_counts_from_the_request_start_in_milliseconds() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hi.", "voice_id": 1}, now=1.0)
    (request,) = _requests(t)
    t.send_audio(request.ref, b"\x00\x00" * 4800, 1.2501234)
    t.complete_chunk(request.ref, 50.0, 1.3)
    final = json.loads(t.messages_to_send()[-1])
    assert final["debug"]["ttfa_ms"] == 250.123


def test_an_idle_multi_session_closes_at_once_on_shutdown() -> None:
    m = MultiServerSession()
    m.shutdown(1.0)
    assert [json.loads(x) for x in m.messages_to_send()] == [
        {"session_closed": True, "total_audio_seconds": 0.0}
    ]
    assert m.close_code == 1012


def test_a_busy_multi_session_closes_after_its_context_finishes() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello there. ", "context_id": "a", "voice_settings": {"voice_id": 1},
              "flush": True})
    (request,) = _requests(m)
    m.shutdown(1.0, code=1013)
    assert m.messages_to_send() == [] and m.close_code is None  # the context still speaks
    m.send_audio(request.ref, b"\x00\x00" * 2400, 1.1)
    m.complete_chunk(request.ref, 10.0, 1.2)
    frames = [json.loads(x) for x in m.messages_to_send()]
    assert [next(iter(f)) for f in frames] == ["audio", "chunk_complete", "final",
                                               "session_closed"]
    assert m.close_code == 1013


@pytest.mark.parametrize("code, status", [("NOT_FOUND", 404), ("MISSING_VOICE_ID", 400)])
def test_a_stream_turn_refused_by_an_error_frame_ends_and_the_next_names_its_voice(
    code: str, status: int,
) -> None:
    from kugelwire.protocol import StreamClientSession
    from kugelwire.protocol.events import ServerError, TurnStarted

    s = StreamClientSession(voice_id=1)
    s.send_text("Hi there.", 0.0, flush=True)
    assert s.messages_to_send() == ['{"text":"Hi there.","voice_id":1,"flush":true}']
    assert list(s.events()) == [TurnStarted(0)]
    s.receive_message(json.dumps({"error": "refused", "error_code": code, "code": status}), 0.1)
    (error,) = list(s.events())
    assert isinstance(error, ServerError) and error.turn == 0
    assert error.ends_turn and error.ends_work  # no final will come for it
    s.send_text("Again.", 0.2, flush=True)
    # a new turn (not text for the refused one), and it names the voice again
    assert s.messages_to_send() == ['{"text":"Again.","voice_id":1,"flush":true}']
    assert list(s.events()) == [TurnStarted(1)]


_FINAL = json.dumps({"final": True, "chunks": 0, "total_samples": 0, "dur_ms": 0.0,
                     "gen_ms": 0.0, "rtf": 0.0})


def test_a_tts_cancel_that_crosses_a_final_passes_to_the_request_sent_before_it() -> None:
    from kugelwire.protocol import TTSClientSession
    from kugelwire.protocol.events import Interrupted

    s = TTSClientSession(voice_id=1)
    s.request("First one.", 0.0)
    s.request("Second one.", 0.0)
    s.messages_to_send()
    list(s.events())
    assert s.cancel(0.1) == (0,)
    s.receive_message(_FINAL, 0.2)  # request 0 ended before the cancel reached the server
    (first,) = list(s.events())
    assert isinstance(first, Interrupted) and first.turn == 0
    assert first.metrics is not None and first.metrics.cancelled
    assert first.metrics.ended_at == 0.2
    s.receive_message(json.dumps({"interrupted": True}), 0.3)  # the server cancelled request 1
    (second,) = list(s.events())
    assert isinstance(second, Interrupted) and second.turn == 1 and second.acknowledged
    assert second.metrics is not None and second.metrics.cancelled
    assert second.metrics.ended_at == 0.3


def test_a_tts_cancel_that_crosses_a_final_spares_a_request_sent_after_it() -> None:
    from kugelwire.protocol import TTSClientSession
    from kugelwire.protocol.events import AudioChunk, GenerationStarted, Interrupted
    from kugelwire.protocol.messages import AudioFrame

    s = TTSClientSession(voice_id=1)
    s.request("First one.", 0.0)
    s.cancel(0.1)
    s.request("Second one.", 0.15)  # after the cancel: the server does not cancel it
    s.messages_to_send()
    list(s.events())
    s.receive_message(_FINAL, 0.2)
    assert [type(e) for e in s.events()] == [Interrupted]
    s.receive_message(json.dumps({"generation_started": True, "chunk_id": 0,
                                  "text": "Second one."}), 0.25)
    s.receive_message(AudioFrame.from_bytes(b"\x00\x00" * 10, idx=0, sr=24000,
                                            chunk_id=0).to_json(), 0.3)
    assert [(type(e), e.turn) for e in s.events()] == [(GenerationStarted, 1), (AudioChunk, 1)]
