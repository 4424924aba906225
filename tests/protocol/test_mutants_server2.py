"""Server-session behaviour that a full mutation run of ``_server.py`` (2026-12-02, mutmut
3.8.1, fuzz/README.md) showed no test in the mutmut selection pinned: the connection's request
id on error frames, a disconnect, ``next_event``, the admission hook's "starts work" flag, the
``/ws/tts`` request numbering, queue bound and final's rounding, ``update_settings`` on
``/ws/tts``, multi barge-in on one context, closing behind a flush and shutdowns that wait for
work. Each asserts what the wire or the engine sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kugelwire.protocol import (
    MultiServerSession,
    RemoteProtocolError,
    ServerLimits,
    StreamServerSession,
    SynthesisCancelled,
    SynthesisRequested,
    TTSServerSession,
)

_SESSIONS = [StreamServerSession, MultiServerSession, TTSServerSession]


def _send(session: Any, frame: dict[str, Any], now: float = 0.0) -> list[dict[str, Any]]:
    session.receive_message(json.dumps(frame), now)
    return [json.loads(m) for m in session.messages_to_send()]


def _out(session: Any) -> list[dict[str, Any]]:
    return [json.loads(m) for m in session.messages_to_send()]


def _requests(session: Any) -> list[SynthesisRequested]:
    return [e for e in session.events() if isinstance(e, SynthesisRequested)]


def _text(session: Any, text: str, **extra: Any) -> dict[str, Any]:
    """A text frame as a real client sends it: it names a voice (on multi, context a's)."""
    if isinstance(session, MultiServerSession):
        return {"text": text, "context_id": "a", "voice_settings": {"voice_id": 1}, **extra}
    return {"text": text, "voice_id": 1, **extra}


# -- every endpoint --------------------------------------------------------------------------

@pytest.mark.parametrize("make", _SESSIONS)
def test_error_frames_carry_the_bound_request_id(make: Any) -> None:
    session = make(request_id="req_0")
    session.bind_request_id("req_9")  # the connection's id, bound at the upgrade
    error = _send(session, {"text": "Hi. ", "context_id": "a"}
                  if make is MultiServerSession else {"text": "Hi. "})[-1]
    context = {"context_id": "a"} if make is MultiServerSession else {}
    assert error == {"error": "voice_id is required", "error_code": "MISSING_VOICE_ID",
                     "code": 400, **context, "request_id": "req_9"}


@pytest.mark.parametrize("make", _SESSIONS)
def test_error_frames_carry_the_request_id_given_at_construction(make: Any) -> None:
    session = make(request_id="req_1")
    assert _send(session, {"text": 5})[-1]["request_id"] == "req_1"


@pytest.mark.parametrize("make", _SESSIONS)
def test_connection_lost_cancels_the_chunk_in_flight_and_silences_the_session(
    make: Any,
) -> None:
    session = make()
    session.receive_message(json.dumps(_text(session, "Hello there. ", flush=True)), 0.0)
    (request,) = _requests(session)
    session.messages_to_send()
    session.send_audio(request.ref, b"\x00\x00" * 240, 0.1)  # an audio frame waits in the outbox
    session.connection_lost(1006, "", 0.2)
    assert session.messages_to_send() == []  # nothing is sent on a lost connection
    assert list(session.events()) == [SynthesisCancelled(request.ref)]
    assert session.send_audio(request.ref, b"\x00\x00", 0.3) is False
    assert session.complete_chunk(request.ref, 1.0, 0.3) is False
    session.receive_message(json.dumps(_text(session, "More. ", flush=True)), 0.4)
    assert session.messages_to_send() == [] and list(session.events()) == []
    session.connection_lost(1006, "", 0.5)  # a second disconnect changes nothing
    assert list(session.events()) == []


@pytest.mark.parametrize("make", _SESSIONS)
def test_next_event_pops_one_event_at_a_time(make: Any) -> None:
    session = make()
    assert session.next_event() is None
    session.receive_message(json.dumps(_text(session, "Hello there. ", flush=True)), 0.0)
    event = session.next_event()
    assert isinstance(event, SynthesisRequested) and event.chunk.text == "Hello there. "
    assert session.next_event() is None


@pytest.mark.parametrize("make", _SESSIONS)
def test_fail_chunk_of_an_unknown_chunk_sends_nothing(make: Any) -> None:
    session = make()
    session.receive_message(json.dumps(_text(session, "Hello there. ", flush=True)), 0.0)
    (request,) = _requests(session)
    session.messages_to_send()
    session.complete_chunk(request.ref, 1.0, 0.1)
    session.messages_to_send()
    assert session.fail_chunk(request.ref, "late", 0.2) is False
    assert session.messages_to_send() == []


def _admitted(session: Any) -> list[tuple[int, bool, str | None]]:
    calls: list[tuple[int, bool, str | None]] = []
    session.admission = lambda chars, starts, cid: calls.append((chars, starts, cid))
    return calls


def test_admission_is_told_which_stream_text_starts_a_turn() -> None:
    s = StreamServerSession()
    calls = _admitted(s)
    _send(s, {"text": "Hello ", "voice_id": 1})
    _send(s, {"text": "there. "})
    _send(s, {"flush": True})  # no text: not asked
    _send(s, {"text": "Next turn. "})  # waits behind the draining turn: a new turn
    assert calls == [(6, True, None), (7, False, None), (11, True, None)]


def test_admission_is_told_which_multi_text_creates_a_context() -> None:
    m = MultiServerSession()
    calls = _admitted(m)
    _send(m, {"text": "Hello ", "context_id": "a", "voice_settings": {"voice_id": 1}})
    _send(m, {"text": "there. ", "context_id": "a"})
    _send(m, {"text": "Hi. ", "context_id": "b", "voice_settings": {"voice_id": 1}})
    assert calls == [(6, True, "a"), (7, False, "a"), (4, True, "b")]


def test_admission_is_told_every_tts_request_is_new_work() -> None:
    t = TTSServerSession()
    calls = _admitted(t)
    _send(t, {"text": "One. ", "voice_id": 1})
    _send(t, {"text": "Two. ", "voice_id": 1})
    assert calls == [(5, True, None), (5, True, None)]


def test_admission_refusal_is_an_error_frame_and_nothing_applies() -> None:
    t = TTSServerSession()

    def refuse(chars: int, starts: bool, cid: str | None) -> None:
        raise RemoteProtocolError("server busy", error_code="SERVER_BUSY", code=503)

    t.admission = refuse
    assert _send(t, {"text": "One. ", "voice_id": 1}) == [
        {"error": "server busy", "error_code": "SERVER_BUSY", "code": 503}]
    assert _requests(t) == []


def test_multi_held_chars_counts_every_context() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello ", "context_id": "a", "voice_settings": {"voice_id": 1}})
    _send(m, {"text": "Hi ", "context_id": "b", "voice_settings": {"voice_id": 1}})
    assert m.held_chars() == len("Hello ") + len("Hi ")


# -- /ws/tts ------------------------------------------------------------------------------

def test_tts_held_chars_counts_the_request_being_spoken_and_the_queue() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hello there.", "voice_id": 1})
    assert t.held_chars() == len("Hello there.")
    _send(t, {"text": "Next.", "voice_id": 1})
    assert t.held_chars() == len("Hello there.") + len("Next.")


def test_tts_has_no_timers() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hello there.", "voice_id": 1})
    assert t.next_deadline() is None
    t.handle_timeout(100.0)
    assert t.messages_to_send() == [] and _requests(t) != []


def test_tts_requests_are_numbered_in_order_on_their_chunks() -> None:
    t = TTSServerSession()
    turns = []
    for i in range(3):
        _send(t, {"text": f"Request {i}.", "voice_id": 1}, now=float(i))
        (request,) = _requests(t)
        turns.append(request.ref.turn)
        t.complete_chunk(request.ref, 1.0, i + 0.5)
    assert turns == [0, 1, 2]


def test_tts_a_failed_chunk_starts_the_next_request_at_that_moment() -> None:
    t = TTSServerSession()
    _send(t, {"text": "First.", "voice_id": 1}, now=0.0)
    _send(t, {"text": "Second.", "voice_id": 1}, now=0.0)
    (first,) = _requests(t)
    t.fail_chunk(first.ref, "broke", 1.0)  # the second request starts now
    (second,) = _requests(t)
    t.send_audio(second.ref, b"\x00\x00" * 240, 1.25)
    t.complete_chunk(second.ref, 1.0, 1.5)
    final = _out(t)[-1]
    assert final["debug"]["ttfa_ms"] == 250.0


def test_tts_final_rounds_its_timings() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hi.", "voice_id": 1})
    (request,) = _requests(t)
    t.send_audio(request.ref, b"\x00\x00", 0.0)  # one sample at 24 kHz: 0.041666... ms
    t.complete_chunk(request.ref, 12.34567, 0.1)
    final = _out(t)[-1]
    assert (final["dur_ms"], final["gen_ms"], final["rtf"]) == (0.042, 12.346, 293.9524)


def test_tts_final_of_a_request_without_audio_has_zero_rtf() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hi.", "voice_id": 1})
    (request,) = _requests(t)
    t.complete_chunk(request.ref, 12.0, 0.1)
    final = _out(t)[-1]
    assert (final["dur_ms"], final["gen_ms"], final["rtf"]) == (0.0, 12.0, 0.0)


def test_tts_update_settings_answers_and_applies_to_the_next_request() -> None:
    t = TTSServerSession()
    (frame,) = _send(t, {"update_settings": {"speed": 1.1}})
    assert frame["settings_updated"] is True and frame["settings"]["speed"] == 1.1
    _send(t, {"text": "Hi.", "voice_id": 1})
    (request,) = _requests(t)
    assert request.params.speed == 1.1


def test_tts_the_queue_bound_applies_to_the_first_waiting_request() -> None:
    t = TTSServerSession(limits=ServerLimits(max_queued_chars=3))
    assert _send(t, {"text": "Speaking now.", "voice_id": 1}) == []  # starts: not queued
    assert _send(t, {"text": "abcd", "voice_id": 1}) == [{
        "error": "queue full: at most 10000 messages and 3 characters may wait for the current "
                 "request to finish",
        "error_code": "VALIDATION_ERROR", "code": 400,
    }]
    (request,) = _requests(t)
    t.complete_chunk(request.ref, 1.0, 0.1)
    _out(t)
    # idle again: a request longer than the queue bound starts (it does not wait)
    assert _send(t, {"text": "Long enough.", "voice_id": 1}) == []
    assert len(_requests(t)) == 1


def test_tts_shutdown_waits_for_the_request_being_spoken() -> None:
    t = TTSServerSession()
    _send(t, {"text": "Hi.", "voice_id": 1})
    (request,) = _requests(t)
    t.shutdown(0.1)
    assert t.close_code is None
    t.complete_chunk(request.ref, 1.0, 0.2)
    assert "final" in _out(t)[-1]
    assert t.close_code == 1012


# -- /ws/tts/multi ------------------------------------------------------------------------

def _context(m: MultiServerSession, cid: str, text: str, now: float = 0.0) -> SynthesisRequested:
    _send(m, {"text": text, "context_id": cid, "voice_settings": {"voice_id": 1},
              "flush": True}, now)
    (request,) = _requests(m)
    return request


def test_multi_cancel_of_one_context_spares_the_others() -> None:
    m = MultiServerSession()
    a = _context(m, "a", "Hello a. ")
    _context(m, "b", "Hello b. ")
    assert _send(m, {"cancel": True, "context_id": "a"}) == [
        {"interrupted": True, "context_id": "a"}]
    assert list(m.events()) == [SynthesisCancelled(a.ref)]  # b's chunk goes on


def test_multi_cancel_without_context_stops_every_context() -> None:
    m = MultiServerSession()
    a = _context(m, "a", "Hello a. ")
    b = _context(m, "b", "Hello b. ")
    assert _send(m, {"cancel": True}) == [{"interrupted": True}]
    assert list(m.events()) == [SynthesisCancelled(a.ref), SynthesisCancelled(b.ref)]


def test_multi_a_cancelled_flush_no_longer_holds_up_a_shutdown() -> None:
    m = MultiServerSession()
    _context(m, "a", "Hello there. ")
    _send(m, {"cancel": True, "context_id": "a"})  # the flush's final is no longer owed
    m.shutdown(1.0)
    assert _out(m) == [{"session_closed": True, "total_audio_seconds": 0.0}]
    assert m.close_code == 1012


def test_multi_shutdown_waits_for_buffered_text_without_a_flush() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello", "context_id": "a", "voice_settings": {"voice_id": 1}})
    m.shutdown(1.0)
    assert m.close_code is None and _out(m) == []


def test_multi_shutdown_session_closed_counts_the_contexts_closed_before() -> None:
    m = MultiServerSession()
    a = _context(m, "a", "Hello a. ")
    m.send_audio(a.ref, b"\x00\x00" * 2400, 0.1)
    m.complete_chunk(a.ref, 1.0, 0.2)
    _send(m, {"close_context": True, "context_id": "a"})
    b = _context(m, "b", "Hello b. ")
    m.shutdown(1.0)
    m.complete_chunk(b.ref, 1.0, 1.1)
    assert _out(m)[-1] == {"session_closed": True, "total_audio_seconds": 0.1}


def test_multi_close_behind_two_flushes_speaks_both_before_context_closed() -> None:
    m = MultiServerSession()
    one = _context(m, "a", "One. ")
    _send(m, {"text": "Two. ", "context_id": "a", "flush": True})  # queued behind One.
    _send(m, {"close_context": True, "context_id": "a"})
    _out(m)
    m.complete_chunk(one.ref, 1.0, 1.0)
    assert _out(m) == [
        {"chunk_complete": True, "chunk_id": 0, "audio_seconds": 0.0, "gen_ms": 1,
         "context_id": "a"},
        {"final": True, "context_id": "a"},
        {"generation_started": True, "chunk_id": 1, "text": "Two. ", "context_id": "a"},
    ]
    assert m.context_state("a").value == "closing"
    (two,) = _requests(m)
    m.complete_chunk(two.ref, 1.0, 2.0)
    assert [next(iter(f)) for f in _out(m)] == ["chunk_complete", "final", "final",
                                               "context_closed"]


def test_multi_an_init_only_context_times_out_from_its_creation() -> None:
    m = MultiServerSession()
    assert _send(m, {"context_id": "a", "voice_settings": {"voice_id": 1}}, 1.0) == [
        {"context_created": True, "context_id": "a"}]
    assert m.next_deadline() == 21.0  # the default 20 s inactivity timeout
    m.handle_timeout(20.9)
    assert _out(m) == []
    m.handle_timeout(21.0)
    assert _out(m) == [{"context_timeout": True, "context_id": "a"},
                       {"context_closed": True, "context_id": "a"}]


def test_multi_inactivity_counts_from_the_end_of_the_last_chunk() -> None:
    m = MultiServerSession()
    request = _context(m, "a", "Hello there. ", now=0.0)
    assert m.next_deadline() is None  # speaking: no inactivity timer
    m.complete_chunk(request.ref, 1.0, 5.0)
    assert m.next_deadline() == 25.0
    m.handle_timeout(24.9)
    _out(m)
    assert m.contexts == ("a",)


def test_multi_chunks_carry_the_flush_cycle() -> None:
    m = MultiServerSession()
    turns = []
    for i in range(3):
        _send(m, {"text": f"Part {i}. ", "context_id": "a", "voice_settings": {"voice_id": 1},
                  "flush": True}, float(i))
        (request,) = _requests(m)
        turns.append(request.ref.turn)
        m.complete_chunk(request.ref, 1.0, i + 0.5)  # final: the next cycle starts
    assert turns == [0, 1, 2]


def test_multi_voice_settings_override_the_connection_cfg_scale() -> None:
    m = MultiServerSession()
    _send(m, {"cfg_scale": 1.5})  # connection-wide (the config-only frame)
    _send(m, {"text": "Own. ", "context_id": "a", "flush": True,
              "voice_settings": {"voice_id": 1, "cfg_scale": 2.5}})
    _send(m, {"text": "Shared. ", "context_id": "b", "flush": True,
              "voice_settings": {"voice_id": 1}})
    assert [r.params.cfg_scale for r in _requests(m)] == [2.5, 1.5]


def test_multi_config_on_a_known_context_applies_to_later_contexts() -> None:
    m = MultiServerSession()
    _context(m, "a", "Hello a. ")
    _send(m, {"context_id": "a", "speed": 1.2})  # a's init-like frame: session-wide config
    _send(m, {"text": "Hello b. ", "context_id": "b", "voice_settings": {"voice_id": 1},
              "flush": True})
    (request,) = _requests(m)
    assert request.params.speed == 1.2


def test_multi_update_settings_answers_and_applies_to_later_contexts() -> None:
    m = MultiServerSession()
    (frame,) = _send(m, {"update_settings": {"speed": 0.9}})
    assert frame == {"settings_updated": True, "settings": {
        "cfg_scale": None, "temperature": None, "max_new_tokens": None, "language": None,
        "normalize": None, "speed": 0.9}}
    request = _context(m, "a", "Hello. ")
    assert request.params.speed == 0.9


def _close_contexts(m: MultiServerSession, ids: list[str]) -> None:
    for cid in ids:
        _send(m, {"context_id": cid, "voice_settings": {"voice_id": 1}})
        _send(m, {"context_id": cid, "close_context": True})


def test_multi_keeps_the_last_1024_closed_ids() -> None:
    m = MultiServerSession()
    _close_contexts(m, [f"c{i}" for i in range(1024)])
    assert m.context_state("c0").value == "closed"  # exactly the bound: all kept
    _close_contexts(m, ["c1024"])
    assert m.context_state("c0").value == "idle"  # the oldest is forgotten
    assert m.context_state("c1").value == "closed"
    assert m.context_state("c1024").value == "closed"


def test_multi_a_reused_id_is_the_newest_closed_id_again() -> None:
    m = MultiServerSession()
    _close_contexts(m, ["a", "b"])
    _send(m, {"text": "Again. ", "context_id": "a", "voice_settings": {"voice_id": 1}})
    _send(m, {"context_id": "a", "close_context": True, "immediate": True})  # a: after b
    _close_contexts(m, [f"c{i}" for i in range(1023)])  # 1,025 ids: the oldest goes
    assert m.context_state("b").value == "idle"
    assert m.context_state("a").value == "closed"


# -- /ws/tts/stream -------------------------------------------------------------------------

def test_stream_cancel_while_closing_ends_the_session_empty() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1})
    _send(s, {"close_socket": True})  # the turn drains first, then the socket closes
    assert s.close_code is None
    assert _send(s, {"cancel": True}) == [
        {"interrupted": True},
        {"session_closed": True, "total_audio_seconds": 0.0, "total_text_chunks": 0,
         "total_audio_chunks": 0},
    ]
    assert s.close_code == 1000


def test_stream_cancel_drops_the_waiting_frames_and_their_characters() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})
    _send(s, {"text": "Waiting."})  # behind the draining turn
    assert s.held_chars() == len("Hello there. ") + len("Waiting.")
    _send(s, {"cancel": True})
    assert s.held_chars() == 0


@pytest.mark.parametrize("make", _SESSIONS)
def test_frames_after_the_socket_closed_are_ignored(make: Any) -> None:
    session = make()
    session.receive_message(json.dumps({"close_socket": True}), 0.0)
    session.messages_to_send()
    assert session.close_code == 1000
    session.receive_message(json.dumps(_text(session, "Too late. ", flush=True)), 0.1)
    assert session.messages_to_send() == [] and list(session.events()) == []


@pytest.mark.parametrize("make", _SESSIONS)
def test_chunk_serials_count_from_zero_across_the_session(make: Any) -> None:
    session = make()
    serials = []
    for i in range(3):
        frame = _text(session, f"Part {i}. ", flush=True)
        session.receive_message(json.dumps(frame), float(i))
        (request,) = _requests(session)
        serials.append(request.ref.serial)
        session.complete_chunk(request.ref, 1.0, i + 0.5)
    assert serials == [0, 1, 2]


def _spoken(session: Any, now: float = 1.0) -> list[str]:
    """Play the engine: complete every chunk handed out, in order; their texts."""
    texts = []
    while requests := _requests(session):
        (request,) = requests
        texts.append(request.chunk.text)
        session.complete_chunk(request.ref, 1.0, now)
    return texts


def _sentence(n: int) -> str:
    return "A" + "a" * (n - 2) + "!"  # n characters, a boundary after it


def test_stream_default_chunk_schedule_is_5_80_150_250() -> None:
    s = StreamServerSession()
    text = " ".join(_sentence(n) for n in (5, 79, 149, 249, 10)) + " "
    _send(s, {"text": text, "voice_id": 1, "flush": True})
    assert [len(t) for t in _spoken(s)] == [5, 80, 150, 250, 12]


def test_stream_held_chars_counts_every_queued_chunk() -> None:
    s = StreamServerSession()
    text = " ".join(_sentence(n) for n in (5, 79, 149)) + " "
    _send(s, {"text": text, "voice_id": 1, "flush": True})  # three chunks: one speaks
    assert s.held_chars() == len(text)


def test_stream_auto_mode_lifts_the_first_chunks_minimum() -> None:
    s = StreamServerSession()
    out = _send(s, {"text": "Hi! Again and again. ", "voice_id": 1, "auto_mode": True})
    assert out == [{"generation_started": True, "chunk_id": 0, "text": "Hi!"}]
    plain = StreamServerSession()
    assert _send(plain, {"text": "Hi! Again and again. ", "voice_id": 1}) == []


def test_stream_a_client_may_lower_the_buffer_bound() -> None:
    s = StreamServerSession()
    out = _send(s, {"text": "Hello there my dear friend", "voice_id": 1,
                    "max_buffer_length": 12})
    assert out == [{"generation_started": True, "chunk_id": 0, "text": "Hello there "}]


def test_stream_confirm_delay_comes_from_the_limits() -> None:
    s = StreamServerSession(limits=ServerLimits(confirm_delay_s=0.2))
    _send(s, {"text": "Hello there.", "voice_id": 1}, 1.0)
    assert s.next_deadline() == 1.2  # a terminator at the end is confirmed after 0.2 s


# -- a voice catalogue ----------------------------------------------------------------------

def _catalogue() -> Any:
    from kugelwire.protocol.config import Model, Voice, VoiceCatalogue

    return VoiceCatalogue.of([Voice(7, "Anna", language="de", handle="anna")],
                             models=[Model("m-x", "X")])


@pytest.mark.parametrize("make", _SESSIONS)
def test_a_catalogue_voice_is_named_by_handle_and_gives_its_id_and_language(make: Any) -> None:
    session = make(catalogue=_catalogue())
    frame = {"text": "Hallo. ", "flush": True, "model_id": "m-x"}
    if make is MultiServerSession:
        frame.update(context_id="a", voice_settings={"voice_id": "anna"})
    else:
        frame["voice_id"] = "anna"
    assert not any("error" in f for f in _send(session, frame))
    (request,) = _requests(session)
    assert (request.params.voice_id, request.params.language) == (7, "de")
    assert request.params.model_id == "m-x"  # the catalogue's models, not the service's


def test_a_request_language_wins_over_the_catalogue_voice() -> None:
    t = TTSServerSession(catalogue=_catalogue())
    _send(t, {"text": "Bonjour.", "voice_id": 7, "language": "fr"})
    (request,) = _requests(t)
    assert (request.params.voice_id, request.params.language) == (7, "fr")


@pytest.mark.parametrize("make", _SESSIONS)
def test_a_voice_not_in_the_catalogue_is_not_found(make: Any) -> None:
    session = make(catalogue=_catalogue())
    context = {"context_id": "a"} if make is MultiServerSession else {}
    frame = _text(session, "Hallo. ", flush=True)
    if make is MultiServerSession:
        frame["voice_settings"] = {"voice_id": 99}
    else:
        frame["voice_id"] = 99
    assert _send(session, frame) == [
        {"error": "Voice not found", "error_code": "NOT_FOUND", "code": 404, **context}]
    assert _requests(session) == []


def test_a_catalogue_server_still_asks_for_a_missing_voice() -> None:
    s = StreamServerSession(catalogue=_catalogue())
    assert _send(s, {"text": "Hallo. ", "flush": True}) == [
        {"error": "voice_id is required", "error_code": "MISSING_VOICE_ID", "code": 400}]


# -- third batch: the queue bounds, a chunk cut by a timer on /ws/tts/multi -------------------

def test_tts_the_queue_takes_exactly_max_queued_messages() -> None:
    t = TTSServerSession(limits=ServerLimits(max_queued_messages=2))
    for text in ("Speaking.", "One.", "Two."):  # the first starts, two wait: the bound
        assert _send(t, {"text": text, "voice_id": 1}) == []
    assert _send(t, {"text": "Three.", "voice_id": 1}) == [{
        "error": "queue full: at most 2 messages and 100000 characters may wait for the "
                 "current request to finish",
        "error_code": "VALIDATION_ERROR", "code": 400,
    }]


def test_stream_a_frame_over_the_queue_bound_is_refused_naming_the_turn() -> None:
    s = StreamServerSession(limits=ServerLimits(max_queued_chars=3))
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})  # draining
    assert _send(s, {"text": "abc"}) == []  # 3 characters wait: the bound
    assert _send(s, {"text": "d"}) == [{
        "error": "queue full: at most 10000 messages and 3 characters may wait for the "
                 "current turn to finish",
        "error_code": "VALIDATION_ERROR", "code": 400,
    }]


def test_multi_inactivity_after_a_chunk_the_confirm_timer_cut() -> None:
    m = MultiServerSession()
    _send(m, {"text": "Hello there.", "context_id": "a", "voice_settings": {"voice_id": 1}})
    m.handle_timeout(0.05)  # the terminator is confirmed: the chunk goes to the engine
    (request,) = _requests(m)
    m.complete_chunk(request.ref, 1.0, 5.0)  # no flush: no final restarts the timer
    assert m.next_deadline() == 25.0


# -- fourth batch: the engine's hand-ins --------------------------------------------------

def test_dropped_audio_counts_every_refused_call() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})
    (request,) = _requests(s)
    _send(s, {"cancel": True})
    assert not s.send_audio(request.ref, b"\x00\x00", 1.0)
    assert not s.send_audio(request.ref, b"\x00\x00", 1.1)
    assert s.dropped_audio == 2


def test_odd_pcm_is_refused_with_its_reason() -> None:
    from kugelwire.protocol import LocalProtocolError

    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})
    (request,) = _requests(s)
    with pytest.raises(LocalProtocolError,
                       match=r"^PCM16 audio must have an even number of bytes$"):
        s.send_audio(request.ref, b"\x00\x00\x00", 0.1)


def test_word_timestamps_are_taken_only_for_a_chunk_in_flight() -> None:
    from kugelwire.protocol import WordTimestamp

    m = MultiServerSession()
    _send(m, {"text": "Hello there. ", "context_id": "a", "flush": True, "word_timestamps": True,
              "voice_settings": {"voice_id": 1}})
    (request,) = _requests(m)
    word = WordTimestamp("Hello", 0, 300, 0, 5, 1.0)
    assert m.send_word_timestamps(request.ref, [word], 0.1) is True
    m.messages_to_send()
    m.complete_chunk(request.ref, 1.0, 0.2)
    words = next(f for f in _out(m) if "word_timestamps" in f)
    assert words["context_id"] == "a" and words["chunk_id"] == 0
    assert len(words["word_timestamps"]) == 1
    assert m.send_word_timestamps(request.ref, [word], 0.3) is False  # complete: not taken


def test_chunk_complete_reports_its_own_audio_and_rounded_gen_ms() -> None:
    s = StreamServerSession()
    _send(s, {"text": _sentence(5) + " " + _sentence(79) + " ", "voice_id": 1, "flush": True})
    (first,) = _requests(s)
    s.send_audio(first.ref, b"\x00\x00" * 2400, 0.1)
    s.complete_chunk(first.ref, 1.23456, 0.2)
    (second,) = _requests(s)
    s.send_audio(second.ref, b"\x00\x00" * 4800, 0.3)
    s.messages_to_send()
    s.complete_chunk(second.ref, 2.0, 0.4)
    done = next(json.loads(m) for m in s.messages_to_send() if "chunk_complete" in m)
    assert done == {"chunk_complete": True, "chunk_id": 1, "audio_seconds": 0.2, "gen_ms": 2}


def test_chunk_complete_gen_ms_is_rounded_to_the_microsecond() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})
    (request,) = _requests(s)
    s.messages_to_send()
    s.complete_chunk(request.ref, 1.23456, 0.2)
    assert _out(s)[0]["gen_ms"] == 1.235


def test_tts_final_sums_gen_ms_over_chunks_and_counts_whole_samples() -> None:
    t = TTSServerSession()
    _send(t, {"text": _sentence(5) + " " + _sentence(79), "voice_id": 1})
    for gen_ms in (10.0, 20.0):
        (request,) = _requests(t)
        t.send_audio(request.ref, b"\x00\x00" * 2400, 0.1)
        t.complete_chunk(request.ref, gen_ms, 0.2)
    final = t.messages_to_send()[-1]
    assert '"total_samples":4800,' in final.replace(" ", "")
    assert json.loads(final)["gen_ms"] == 30.0


def test_stream_a_waiting_frame_applied_leaves_no_waiting_characters() -> None:
    s = StreamServerSession()
    _send(s, {"text": "Hello there. ", "voice_id": 1, "flush": True})
    _send(s, {"text": "Next."})  # waits behind the draining turn
    (request,) = _requests(s)
    s.complete_chunk(request.ref, 1.0, 0.5)  # the turn ends; "Next." starts the next one
    assert s.held_chars() == len("Next.")
