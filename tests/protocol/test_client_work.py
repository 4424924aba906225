"""The work vocabulary every client session shares: work keys, ``ends_work``, cancel, replay.

An SDK built on the sessions alone routes events by ``session.work_key(event)``, ends a piece of
work on ``event.ends_work``, purges what ``cancel()`` names and restarts with ``replay()``; these
tests pin what each endpoint says.
"""

from __future__ import annotations

from typing import Any

from kugelwire.protocol import (
    ConnectionTerminated,
    MultiClientSession,
    StreamClientSession,
    TTSClientSession,
)
from kugelwire.protocol._events import (
    ContextClosed,
    ErrorCode,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnAborted,
    TurnClosed,
    TurnFinal,
)
from kugelwire.testing import SessionPair


def ended(session: Any, events: list[Any]) -> list[Any]:
    return [session.work_key(e) for e in events if e.ends_work]


def test_each_endpoint_names_its_work_and_says_when_it_ends() -> None:
    stream = SessionPair.stream(voice_id=1)
    stream.client.send_text("One.", stream.now, flush=True)
    stream.client.send_text("Two.", stream.now, flush=True)
    stream.pump()
    events = stream.client_events()
    assert ended(stream.client, events) == [0, 1]
    assert [type(e) for e in events if e.ends_work] == [TurnClosed, TurnClosed]
    assert not any(e.ends_work for e in events if isinstance(e, TurnFinal))

    tts = SessionPair.tts(voice_id=1)
    tts.client.request("One.", tts.now)
    tts.pump()
    assert ended(tts.client, tts.client_events()) == [0]
    assert [type(e) for e in tts.client_events() if e.ends_work] == [RequestFinal]

    multi = SessionPair.multi(voice_id=1)
    multi.client.create_context("a", multi.now)
    multi.client.send_text("a", "One.", multi.now, flush=True)
    multi.pump()
    assert multi.events_of(TurnFinal) and ended(multi.client, multi.client_events()) == []
    assert {multi.client.work_key(e) for e in multi.client_events()} <= {"a", None}
    multi.client.close_context("a", multi.now)
    multi.pump()
    assert ended(multi.client, multi.client_events()) == ["a"]
    assert [type(e) for e in multi.client_events() if e.ends_work] == [ContextClosed]


def test_cancel_returns_the_keys_of_the_cancelled_work_on_every_session() -> None:
    stream = StreamClientSession(voice_id=1)
    stream.send_text("One.", 0.0, flush=True)
    stream.send_text("Two", 0.0)
    assert stream.cancel(0.1) == (0, 1)
    assert stream.cancel(0.2) == ()
    multi = MultiClientSession(voice_id=1)
    multi.create_context("a", 0.0)
    multi.create_context("b", 0.0)
    assert multi.cancel(0.1) == ("a", "b")
    assert multi.cancel(0.2, "b") == ("b",)
    tts = TTSClientSession(voice_id=1)
    assert tts.cancel(0.0) == ()
    tts.request("One.", 0.0)
    tts.request("Two.", 0.0)
    assert tts.cancel(0.1) == (0,)
    assert tts.cancel(0.2) == (1,)


def test_interrupted_ends_a_turn_or_request_but_only_a_cycle_of_a_context() -> None:
    assert Interrupted(0).ends_work
    assert not Interrupted(0, "a").ends_work
    assert TurnAborted(0, 1012, False, "x").ends_work
    assert not ServerError(ErrorCode.NOT_FOUND, "Voice not found", 404).ends_work  # by default


def test_errors_that_end_work_say_so() -> None:
    tts = TTSClientSession(voice_id=1)
    tts.request("One.", 0.0)
    tts.receive_message('{"error": "Voice not found", "code": 404, "error_code": "NOT_FOUND"}',
                        0.1)
    [error] = [e for e in tts.events() if isinstance(e, ServerError)]
    assert error.ends_work and tts.work_key(error) == 0
    multi = MultiClientSession(voice_id=1)
    multi.create_context("a", 0.0)
    multi.receive_message('{"error": "Too many concurrent contexts", "code": 429, '
                          '"error_code": "TOO_MANY_CONTEXTS", "context_id": "a"}', 0.1)
    [error] = [e for e in multi.events() if isinstance(e, ServerError)]
    assert error.ends_work and multi.work_key(error) == "a"
    stream = StreamClientSession(voice_id=1)
    stream.send_text("One.", 0.0, flush=True)
    stream.receive_message('{"error": "bad markup", "code": 400, '
                           '"error_code": "VALIDATION_ERROR"}', 0.1)
    [error] = [e for e in stream.events() if isinstance(e, ServerError)]
    assert not error.ends_work and stream.work_key(error) == 0  # the turn goes on


def _lost(session: Any) -> ConnectionTerminated:
    session.connection_lost(1012, "service restart", 1.0)
    return next(e for e in session.events() if isinstance(e, ConnectionTerminated))


def test_a_request_replays_with_the_parameters_it_was_sent_with() -> None:
    lost = TTSClientSession(voice_id=1)
    lost.request("Hallo.", 0.0, language="de")
    [replay] = _lost(lost).replay
    fresh = TTSClientSession(voice_id=1)
    assert fresh.replay(replay, 2.0) == 0
    assert fresh.messages_to_send() == ['{"text":"Hallo.","voice_id":1,"language":"de"}']


def test_a_context_replays_with_the_options_it_was_created_with() -> None:
    lost = MultiClientSession(voice_id=1)
    lost.create_context("a", 0.0, voice_id=2, cfg_scale=1.5)
    lost.send_text("a", "Once upon a time.", 0.0, flush=True)
    lost.create_context("b", 0.0)
    lost.flush("b", 0.0)  # flushed, no text of its own
    lost.messages_to_send()
    ra, rb = _lost(lost).replay
    fresh = MultiClientSession(voice_id=1)
    assert fresh.replay(ra, 2.0) == "a"
    assert fresh.replay(rb, 2.0) == "b"
    assert fresh.messages_to_send() == [
        '{"text":" ","context_id":"a","voice_id":1,'
        '"voice_settings":{"voice_id":2,"cfg_scale":1.5}}',
        '{"text":"Once upon a time.","context_id":"a","flush":true}',
        '{"text":" ","context_id":"b","voice_settings":{"voice_id":1}}',
        '{"flush":true,"context_id":"b"}',
    ]


def test_a_tts_session_closes_once_its_requests_are_answered() -> None:
    pair = SessionPair.tts(voice_id=1)
    pair.client.request("One.", pair.now)
    pair.client.close_socket(pair.now)
    assert pair.client.close_code is None  # a request is still waiting
    pair.pump()
    assert pair.events_of(RequestFinal)
    assert pair.client.close_code == 1000
