"""The linter without sockets: a wrapped session is the same session (property test), findings
are exact on a fake clock, thresholds validate, memory stays bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.lint import Finding, Linter, LintThresholds, Rule
from kugelwire.protocol import (
    MultiServerSession,
    StreamServerSession,
    SynthesisRequested,
    TTSServerSession,
)

PCM = b"\x01\x00" * 2400  # 0.1 s at 24 kHz


def quiet_linter(**kw: Any) -> Linter:
    return Linter(LintThresholds(**kw), on_finding=None, on_summary=None)


def serve_events(session: Any, now: float) -> list[str]:
    """Answer every synthesis request at once (one block of audio), return the outbox."""
    for event in list(session.events()):
        if isinstance(event, SynthesisRequested):
            session.send_audio(event.ref, PCM, now)
            session.complete_chunk(event.ref, 1.0, now)
    return list(session.messages_to_send())


FRAMES = st.sampled_from([
    {"text": "Hello "}, {"text": "there. "}, {"text": "How are you? "}, {"flush": True},
    {"text": "<spell>AB", "language": "en"}, {"text": "12</spell> ok. "}, {"cancel": True},
    {"close": True}, {"text": ""}, {"update_settings": {"speed": 1.1}}, {"voice_id": 1},
    {"text": "x", "flush": True}, {"close_socket": True}, {"text": "bad", "speed": 9},
])
CONTEXT_FRAMES = st.builds(
    lambda f, c: {**f, "context_id": c},
    st.sampled_from([{"text": "Hi. "}, {"flush": True}, {"close_context": True},
                     {"close_context": True, "immediate": True}, {"text": ""}]),
    st.sampled_from(["a", "b"]),
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["stream", "multi", "tts"]),
    frames=st.lists(st.tuples(st.one_of(FRAMES, CONTEXT_FRAMES), st.floats(0, 6)), max_size=25),
)
def test_a_wrapped_session_behaves_exactly_like_the_session(
    kind: str, frames: list[tuple[dict[str, Any], float]]
) -> None:
    cls, endpoint = {"stream": (StreamServerSession, "/ws/tts/stream"),
                     "multi": (MultiServerSession, "/ws/tts/multi"),
                     "tts": (TTSServerSession, "/ws/tts")}[kind]
    bare = cls()
    linter = quiet_linter()
    wrapped = linter.wrap(cls(), endpoint, now=0.0)
    now = 0.0
    for frame, dt in frames:
        now += dt
        for s in (bare, wrapped):
            deadline = s.next_deadline()
            if deadline is not None and deadline <= now:
                s.handle_timeout(now)
            s.receive_message(json.dumps(frame), now)
        assert serve_events(bare, now) == serve_events(wrapped, now)
        assert bare.next_deadline() == wrapped.next_deadline()
        assert bare.close_code == wrapped.close_code
    bare.connection_lost(1000, "", now + 1)
    wrapped.connection_lost(1000, "", now + 1)
    assert linter.open_connections == 0 and len(linter.summaries) == 1


def test_flush_per_sentence_on_a_fake_clock() -> None:
    linter = quiet_linter()
    s = linter.wrap(StreamServerSession(), "/ws/tts/stream", now=0.0)
    s.receive_message(
        '{"text": "One sentence.", "flush": true, "language": "en", "voice_id": 1}', 10.0)
    serve_events(s, 10.1)  # turn 1's audio, final, session_closed at 10.1
    s.receive_message('{"text": "Another one.", "flush": true}', 10.3)  # 200 ms later
    assert linter.findings == []  # decided when the new turn's first audio goes out
    serve_events(s, 10.35)
    [f] = linter.findings
    assert f == Finding(
        rule=Rule.FLUSH_PER_SENTENCE, connection="c1", endpoint="/ws/tts/stream", turn=2,
        context_id=None, at=10.35, evidence=f.evidence, instead=f.instead, latency_ms=50.0,
    )
    assert "200 ms after its audio was all out" in f.evidence
    # a third sentence of the same reply is not a second finding
    s.receive_message('{"text": "And a third.", "flush": true}', 10.4)
    serve_events(s, 10.45)
    # the user's next turn, seconds later, is no finding either
    s.receive_message('{"text": "Next turn.", "flush": true}', 20.0)
    serve_events(s, 20.1)
    s.connection_lost(1000, "", 30.0)
    assert [f.rule for f in linter.findings] == [Rule.FLUSH_PER_SENTENCE]
    summary = linter.summaries[0]
    assert (summary.units, summary.flushes, summary.findings) == (
        4, 4, (Rule.FLUSH_PER_SENTENCE,))
    assert "4 turn(s)" in str(summary) and "flush-per-sentence" in str(summary)
    assert (summary.connection, summary.endpoint, summary.closed_at) == (
        "c1", "/ws/tts/stream", 30.0)
    assert summary.client_frames == 4 and summary.server_frames > 4
    assert summary.characters == sum(map(len, (
        "One sentence.", "Another one.", "And a third.", "Next turn.")))


def test_idle_auto_flush_costs_the_idle_time() -> None:
    linter = quiet_linter()
    s = linter.wrap(StreamServerSession(), "/ws/tts/stream", now=0.0)
    s.receive_message('{"text": "never flushed", "language": "en", "voice_id": 1}', 1.0)
    serve_events(s, 1.0)
    deadline = s.next_deadline()
    assert deadline is not None
    while (deadline := s.next_deadline()) is not None and deadline <= 6.0:
        s.handle_timeout(deadline)
    serve_events(s, 6.0)
    [f] = linter.findings
    assert f.rule is Rule.IDLE_AUTO_FLUSH and f.latency_ms == 5000.0 and f.turn == 1


def test_no_preconnect_needs_the_accept_time() -> None:
    linter = quiet_linter()
    for opened in (None, 0.0):
        s = linter.wrap(StreamServerSession(), "/ws/tts/stream", now=opened)
        s.receive_message('{"text": "Hi.", "flush": true, "language": "en", "voice_id": 1}', 0.01)
        serve_events(s, 0.02)
        s.connection_lost(1000, "", 0.05)
    # without the accept time the rule cannot be decided; with it, it is
    assert [(f.rule, f.connection) for f in linter.findings] == [(Rule.NO_PRECONNECT, "c2")]


def test_memory_stays_bounded_and_counts_stay_exact() -> None:
    linter = quiet_linter(reconnect_gap_s=0.0)
    t = 0.0
    for _ in range(500):
        s = linter.wrap(StreamServerSession(), "/ws/tts/stream", now=t)
        s.receive_message('{"text": "' + "long " * 60 + '", "flush": true}', t + 0.001)
        serve_events(s, t + 0.002)
        s.connection_lost(1000, "", t + 0.003)
        t += 10.0
    assert len(linter.findings) == 100 and linter.total == 500
    assert linter.counts[Rule.NO_PRECONNECT] == 500
    assert len(linter.summaries) == 20
    total, new = linter.findings_since(495)
    assert total == 500 and len(new) == 5 and new[-1] == linter.findings[-1]
    linter.clear()
    assert linter.findings == [] and linter.total == 500


@pytest.mark.parametrize(
    "bad",
    [{"mid_reply_gap_s": -1}, {"cold_text_s": -0.1}, {"short_text_chars": 0}, {"repeat": 1}],
)
def test_thresholds_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LintThresholds(**bad)  # type: ignore[arg-type]


def test_findings_print_and_serialise() -> None:
    f = Finding(Rule.CONTEXT_TIMEOUT, "c4", "/ws/tts/multi", None, "ctx", 1.5, "idle", "close it")
    assert str(f) == "[context-timeout] c4 /ws/tts/multi context 'ctx': idle. Instead: close it."
    assert json.loads(json.dumps(f.to_dict()))["rule"] == "context-timeout"


def test_a_context_init_frame_right_after_connecting_is_no_finding() -> None:
    linter = quiet_linter()
    s = linter.wrap(MultiServerSession(), "/ws/tts/multi", now=0.0)
    # the SDKs create (pre-provision) a context with " " at once; its text comes later
    s.receive_message('{"text": " ", "context_id": "a", "language": "en", '
                      '"voice_settings": {"voice_id": 1}}', 0.001)
    s.receive_message('{"text": "The reply. ", "context_id": "a"}', 5.0)
    s.receive_message('{"context_id": "a", "close_context": true}', 5.1)
    serve_events(s, 5.2)
    s.connection_lost(1000, "", 9.0)
    assert linter.findings == []


def _multi(frames: list[tuple[float, str]]) -> Linter:
    linter = quiet_linter()
    s = linter.wrap(MultiServerSession(), "/ws/tts/multi", now=0.0)
    for now, frame in frames:
        s.receive_message(frame, now)
        serve_events(s, now + 0.01)
    s.connection_lost(1000, "", 60.0)
    return linter


def test_a_context_flushed_per_sentence() -> None:
    linter = _multi([
        (5.0, '{"text": "First sentence. ", "context_id": "a", "language": "en", '
              '"voice_settings": {"voice_id": 1}, "flush": true}'),
        (5.1, '{"text": "Second one. ", "context_id": "a", "flush": true}'),
        (5.2, '{"context_id": "a", "close_context": true}'),
    ])
    [f] = linter.findings
    assert (f.rule, f.context_id, f.turn) == (Rule.FLUSH_PER_SENTENCE, "a", 2)
    assert "in flush cycle 2" in f.evidence and f.latency_ms is not None


def test_a_dialogue_of_two_contexts_is_no_flush_per_sentence() -> None:
    lines = [("a", "Good morning!"), ("b", "Morning, did you sleep well?"),
             ("a", "Very well, thanks."), ("b", "Great.")]
    linter = _multi([
        (5.0 + i * 0.1,
         json.dumps({"text": text, "context_id": cid, "language": "en",
                     "voice_settings": {"voice_id": 1}, "flush": True}))
        for i, (cid, text) in enumerate(lines)
    ] + [(6.0, '{"close_socket": true}')])
    assert linter.findings == []


def test_multi_text_never_flushed_at_disconnect() -> None:
    linter = _multi([
        (5.0, '{"text": "Flushed. ", "context_id": "a", "language": "en", '
              '"voice_settings": {"voice_id": 1}, "flush": true}'),
        (9.0, '{"text": "Never flushed", "context_id": "b", "voice_settings": {"voice_id": 1}}'),
    ])
    [f] = linter.findings
    assert (f.rule, f.context_id, f.turn) == (Rule.NEVER_FLUSHED, "b", None)
    # close_socket speaks what is open: no finding
    assert _multi([(5.0, '{"text": "Tail", "context_id": "a", "language": "en", '
                         '"voice_settings": {"voice_id": 1}}'),
                   (5.1, '{"close_socket": true}')]).findings == []
