"""Exact-output tests of server-session details that mutation testing (mutmut) showed were
not pinned by any other test: error frames, synthesis parameters, /ws/tts finals, fail_chunk,
multi-context bookkeeping. Each asserts behaviour a client can observe on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kugelwire.protocol import (
    MultiServerSession,
    ServerLimits,
    StreamServerSession,
    SynthesisCancelled,
    SynthesisRequested,
    TTSServerSession,
)


def _with_voice(session: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` as a real client sends it: text names a voice (on multi, the context's)."""
    if "text" not in frame or "voice_id" in frame or "voice_settings" in frame:
        return frame
    if isinstance(session, MultiServerSession):
        return frame if "context_id" not in frame else {**frame, "voice_settings": {"voice_id": 1}}
    return {**frame, "voice_id": 1}


def _send(session: Any, frame: dict[str, Any], now: float = 0.0) -> list[dict[str, Any]]:
    session.receive_message(json.dumps(_with_voice(session, frame)), now)
    return [json.loads(m) for m in session.messages_to_send()]


def _requests(session: Any) -> list[SynthesisRequested]:
    return [e for e in session.events() if isinstance(e, SynthesisRequested)]


# -- error frames -----------------------------------------------------------------------------

def test_multi_text_without_context_id_is_an_error_frame() -> None:
    s = MultiServerSession()
    assert _send(s, {"text": "hi"}) == [
        {"error": "context_id is required on /ws/tts/multi", "error_code": "VALIDATION_ERROR",
         "code": 400}
    ]
    assert _send(s, {"flush": True}) != []
    assert _send(s, {"close_context": True}) != []


def test_multi_config_only_frame_without_context_updates_session_config() -> None:
    s = MultiServerSession()
    assert _send(s, {"sample_rate": 16000}) == []
    _send(s, {"text": "Hello there. ", "context_id": "a", "flush": True})
    (req,) = _requests(s)
    assert req.params.sample_rate == 16000


def test_multi_unknown_context_close_is_an_error_naming_it() -> None:
    s = MultiServerSession()
    assert _send(s, {"close_context": True, "context_id": "zz"}) == [
        {"error": "unknown context 'zz'", "error_code": "VALIDATION_ERROR", "code": 400,
         "context_id": "zz"}
    ]


def test_text_limit_errors_name_turn_or_context() -> None:
    limits = ServerLimits(max_text_chars=5)
    s = StreamServerSession(limits=limits)
    assert _send(s, {"text": "toolong"}) == [
        {"error": "text: more than 5 characters in this turn", "error_code": "VALIDATION_ERROR",
         "code": 400}
    ]
    m = MultiServerSession(limits=limits)
    out = _send(m, {"text": "toolong", "context_id": "a"})
    assert out[-1] == {"error": "text: more than 5 characters in this context",
                       "error_code": "VALIDATION_ERROR", "code": 400, "context_id": "a"}


def test_markup_error_names_the_context() -> None:
    m = MultiServerSession()
    out = _send(m, {"text": '<prosody rate="weird">x</prosody>', "context_id": "a"})
    assert out[-1]["context_id"] == "a"
    assert out[-1]["error"].startswith("<prosody>: unknown rate 'weird'")


def test_multi_close_socket_then_input_is_refused() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hi", "context_id": "a"})
    out = _send(m, {"close_socket": True})
    # the graceful close flushes context a: its chunk goes to the engine, nothing closes yet
    assert out == [{"generation_started": True, "chunk_id": 0, "text": "Hi", "context_id": "a"}]
    late = _send(m, {"text": "more", "context_id": "b"})
    assert late == [{"error": "close_socket was received; no more input is accepted",
                     "error_code": "VALIDATION_ERROR", "code": 400}]


# -- synthesis parameters ----------------------------------------------------------------------

def test_default_synthesis_params() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hello there."})
    (req,) = _requests(t)
    p = req.params
    assert (p.model_id, p.language, p.speed, p.sample_rate, p.encoding) == (
        "kugel-3", "en", 1.0, 24000, "pcm_s16le")
    assert (p.cfg_scale, p.temperature, p.normalize, p.word_timestamps) == (None, 0.4, True, False)
    s = StreamServerSession()
    _send(s, {"text": "Hello there.", "flush": True})
    (req,) = _requests(s)
    assert req.params.temperature is None  # unset on /ws/tts/stream


def test_explicit_synthesis_params_pass_through() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there.", "flush": True, "language": "de", "speed": 1.2,
              "cfg_scale": 2.5, "temperature": 0.7, "normalize": False, "word_timestamps": True,
              "model_id": "kugel-2", "voice_id": 7})
    (req,) = _requests(s)
    p = req.params
    assert (p.language, p.speed, p.cfg_scale, p.temperature, p.normalize) == (
        "de", 1.2, 2.5, 0.7, False)
    assert (p.word_timestamps, p.model_id, p.voice_id) == (True, "kugel-2", 7)


# -- /ws/tts final and fail_chunk --------------------------------------------------------------

def test_tts_final_frame_fields_and_fail_chunk() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hello there."}, now=0.0)
    (req,) = _requests(t)
    assert t.send_audio(req.ref, b"\x00\x01" * 2400, 0.25)
    t.messages_to_send()
    assert t.fail_chunk(req.ref, "", 0.5) is True
    error, final = (json.loads(m) for m in t.messages_to_send())
    assert error == {"error": "Audio generation failed", "error_code": "INTERNAL_ERROR",
                     "code": 500}
    assert final == {
        "final": True, "chunks": 1, "total_samples": 2400, "dur_ms": 100.0, "gen_ms": 0.0,
        "rtf": 0.0, "debug": {"original_text": "Hello there.", "ttfa_ms": 250.0, "speed": 1.0},
        "usage": {"audio_seconds": 0.1, "characters": 12, "cost_cents": None,
                  "cost_unavailable": True, "model_id": "kugel-3"},
    }
    assert t.fail_chunk(req.ref, "again", 0.6) is False  # no longer in flight


def test_tts_final_rtf_and_gen_ms() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hi.", "speed": 1.1})
    (req,) = _requests(t)
    t.send_audio(req.ref, b"\x00\x00" * 4800, 0.0)
    t.complete_chunk(req.ref, 50.0, 0.1)
    final = json.loads(t.messages_to_send()[-1])
    assert final["dur_ms"] == 200.0 and final["gen_ms"] == 50.0 and final["rtf"] == 0.25
    assert final["debug"] == {"original_text": "Hi.", "ttfa_ms": 0.0, "speed": 1.1}
    assert final["chunks"] == 1 and final["total_samples"] == 4800


def test_fail_chunk_in_a_context_names_it_and_keeps_going() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello there. ", "context_id": "a", "flush": True})
    (req,) = _requests(m)
    assert m.fail_chunk(req.ref, "engine broke", 1.0)
    out = [json.loads(x) for x in m.messages_to_send()]
    assert out[0] == {"error": "engine broke", "error_code": "INTERNAL_ERROR", "code": 500,
                      "context_id": "a"}
    assert {"final": True, "context_id": "a"}.items() <= out[-1].items()


def test_original_text_accumulates_over_frames() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello "})
    _send(s, {"text": "there."})
    _send(s, {"flush": True})
    (req,) = _requests(s)
    assert req.chunk.source == "Hello there."


def test_cancelled_job_audio_is_refused_and_counted() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there.", "flush": True})
    (req,) = _requests(s)
    _send(s, {"cancel": True})
    assert [e for e in s.events() if isinstance(e, SynthesisCancelled)] == [
        SynthesisCancelled(req.ref)
    ]
    assert s.send_audio(req.ref, b"\x00\x00", 1.0) is False
    assert s.dropped_audio == 1
    assert s.complete_chunk(req.ref, 1.0, 1.0) is False


def test_odd_pcm_length_is_a_local_error() -> None:
    from kugelwire.protocol import LocalProtocolError

    s = StreamServerSession()
    _send(s, {"text": "Hello there.", "flush": True})
    (req,) = _requests(s)
    with pytest.raises(LocalProtocolError):
        s.send_audio(req.ref, b"\x00", 0.0)


# -- second batch: framing, G.711, stream close, deferred errors, /ws/tts limits ---------------

def test_close_socket_on_an_idle_stream_is_an_empty_session_closed() -> None:
    s = StreamServerSession()
    assert _send(s, {"close_socket": True}) == [
        {"session_closed": True, "total_audio_seconds": 0.0, "total_text_chunks": 0,
         "total_audio_chunks": 0}
    ]
    assert s.close_code == 1000


@pytest.mark.parametrize(("fmt", "enc"), [("ulaw_8000", "mulaw"), ("alaw_8000", "alaw")])
def test_g711_frames_totals_and_usage(fmt: str, enc: str) -> None:
    from kugelwire.protocol import alaw_encode, ulaw_encode

    s = StreamServerSession()
    _send(s, {"text": "Hi.", "flush": True, "output_format": fmt})
    (req,) = _requests(s)
    assert req.params.sample_rate == 8000 and req.params.encoding == enc
    pcm = b"\x00\x10" * 1600 + b"\x00\x20" * 1600
    assert s.send_audio(req.ref, pcm, 0.3)
    assert s.send_audio(req.ref, b"\x00\x30" * 10, 0.4)
    assert s.complete_chunk(req.ref, 5.0, 0.5)
    out = [json.loads(m) for m in s.messages_to_send()]
    audio = [f for f in out if "audio" in f]
    assert [(f["enc"], f["idx"], f["sr"], f["samples"], f["chunk_id"]) for f in audio] == [
        (enc, 0, 8000, 1600, 0), (enc, 1, 8000, 1600, 0), (enc, 2, 8000, 10, 0)]
    encode = ulaw_encode if enc == "mulaw" else alaw_encode
    import base64

    assert base64.b64decode(audio[0]["audio"]) == encode(b"\x00\x10" * 1600)
    assert base64.b64decode(audio[2]["audio"]) == encode(b"\x00\x30" * 10)
    assert out[3] == {"chunk_complete": True, "chunk_id": 0, "audio_seconds": 0.40125,
                      "gen_ms": 5}
    assert out[4] == {"final": True, "total_audio_seconds": 0.40125, "total_text_chunks": 1,
                      "total_audio_chunks": 3}
    assert out[5] == {"session_closed": True, "total_audio_seconds": 0.40125,
                      "total_text_chunks": 1, "total_audio_chunks": 3,
                      "usage": {"audio_seconds": 0.40125, "characters": 3, "cost_cents": None,
                                "cost_unavailable": True, "model_id": "kugel-3"}}


def test_deferred_bad_text_errors_after_the_draining_turn() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hi.", "flush": True})
    assert _send(s, {"text": '<prosody rate="x">a</prosody>'}) == []  # deferred: draining
    (req,) = _requests(s)
    s.complete_chunk(req.ref, 1.0, 1.0)
    out = [json.loads(m) for m in s.messages_to_send()]
    assert [next(iter(f)) for f in out] == ["chunk_complete", "final", "session_closed", "error"]
    assert out[-1] == {"error": "<prosody>: unknown rate 'x' (slow, medium, fast or 0.8-1.2)",
                       "error_code": "VALIDATION_ERROR", "code": 400}


def test_tts_request_length_limit_is_inclusive() -> None:
    limits = ServerLimits(max_request_chars=5)
    ok = TTSServerSession(limits=limits)
    assert _send(ok, {"text": "12345"}) == []
    assert len(_requests(ok)) == 1
    bad = TTSServerSession(limits=limits)
    assert _send(bad, {"text": "123456"}) == [
        {"error": "text: at most 5 characters", "error_code": "VALIDATION_ERROR", "code": 400}]
    blank = TTSServerSession()
    assert _send(blank, {"text": "  "}) == [
        {"error": "text required", "error_code": "VALIDATION_ERROR", "code": 400}]


def test_multi_close_socket_session_closed_totals_after_last_context() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello there. ", "context_id": "a", "flush": True})
    (req,) = _requests(m)
    m.send_audio(req.ref, b"\x00\x00" * 2400, 0.1)
    m.complete_chunk(req.ref, 1.0, 0.2)
    m.messages_to_send()
    out = _send(m, {"close_socket": True})
    assert out[-2] == {"context_closed": True, "context_id": "a",
                       "usage": {"audio_seconds": 0.1, "characters": 13, "cost_cents": None,
                                 "cost_unavailable": True, "model_id": "kugel-3"}}
    assert out[-1] == {"session_closed": True, "total_audio_seconds": 0.1}
    assert m.close_code == 1000
