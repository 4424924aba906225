"""TurnMetrics on the terminal events of every client session, to the exact value.

A :class:`~kugelwire.testing.SessionPair` runs on a fake clock, and every time in a
:class:`~kugelwire.protocol.TurnMetrics` is a ``now`` the session was given, so the figures are
exact: the clock is moved between the steps (text, flush, first audio, terminal) and each
measured interval is compared with ``==``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kugelwire
from kugelwire.protocol import (
    AudioChunk,
    ConnectionTerminated,
    ContextClosed,
    Interrupted,
    MultiClientSession,
    RequestFinal,
    StreamClientSession,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    TurnMetrics,
    TurnStarted,
)
from kugelwire.testing import SessionPair


def audio(pair: SessionPair[Any], context_id: str | None = None) -> list[AudioChunk]:
    return [e for e in pair.events_of(AudioChunk) if e.context_id == context_id]


def at(pair: SessionPair[Any], now: float) -> float:
    pair.clock.now = now
    return now


def first_audio_at(pair: SessionPair[Any], now: float) -> None:
    """Run the engine for one piece of audio and deliver it at ``now``."""
    at(pair, now)
    pair.deliver_to_server()
    assert pair.step_engine()
    pair.deliver_to_client()


def test_exported_from_both_packages() -> None:
    assert kugelwire.TurnMetrics is TurnMetrics


def test_stream_turn_exact_times() -> None:
    pair = SessionPair.stream()
    c = pair.client
    c.send_text("Hello there. ", at(pair, 1.0))
    c.send_text("How are you?", at(pair, 1.25))
    c.flush(at(pair, 1.5))
    pair.deliver_to_server()
    first_audio_at(pair, 2.0)
    at(pair, 3.5)
    pair.pump()
    [closed] = pair.events_of(TurnClosed)
    m = closed.metrics
    chunks = audio(pair)
    assert m == TurnMetrics(
        turn=0, context_id=None, first_text_at=1.0, flushed_at=1.5, first_audio_at=2.0,
        ended_at=3.5, audio_seconds=sum(e.duration_s for e in chunks),
        audio_chunks=len(chunks), cancelled=False, reconnects=0,
    )
    assert len(chunks) > 2 and m.audio_seconds > 0
    assert m.time_to_first_audio == 1.0
    assert m.flush_to_first_audio == 0.5
    assert m.duration == 2.5


def test_stream_metrics_do_not_change_event_equality() -> None:
    pair = SessionPair.stream()
    pair.client.send_text("Hi.", 0.0, flush=True)
    pair.pump()
    [closed] = pair.events_of(TurnClosed)
    assert closed.metrics is not None
    assert closed == TurnClosed(
        closed.turn, closed.usage, closed.total_audio_seconds, closed.total_text_chunks,
        closed.total_audio_chunks,
    )
    assert hash(closed) == hash(TurnClosed(
        closed.turn, closed.usage, closed.total_audio_seconds, closed.total_text_chunks,
        closed.total_audio_chunks,
    ))


def test_stream_audio_before_the_flush_gives_a_negative_flush_latency() -> None:
    pair = SessionPair.stream()
    c = pair.client
    c.send_text("First sentence. ", at(pair, 0.0))
    c.send_text("Second", at(pair, 0.1))
    first_audio_at(pair, 0.3)  # the server cut "First sentence." already
    c.send_text(" sentence.", at(pair, 0.6), flush=True)
    at(pair, 1.0)
    pair.pump()
    [closed] = pair.events_of(TurnClosed)
    m = closed.metrics
    assert (m.first_text_at, m.flushed_at, m.first_audio_at, m.ended_at) == (0.0, 0.6, 0.3, 1.0)
    assert m.time_to_first_audio == 0.3
    assert m.flush_to_first_audio is not None and abs(m.flush_to_first_audio + 0.3) < 1e-12
    assert m.audio_chunks == len(audio(pair))


def test_stream_second_turn_has_its_own_times() -> None:
    pair = SessionPair.stream()
    c = pair.client
    c.send_text("One.", at(pair, 0.0), flush=True)
    at(pair, 0.5)
    pair.pump()
    c.send_text("Two.", at(pair, 10.0), flush=True)
    pair.deliver_to_server()
    first_audio_at(pair, 10.75)
    at(pair, 11.0)
    pair.pump()
    first, second = (e.metrics for e in pair.events_of(TurnClosed))
    assert (first.turn, first.first_text_at, first.ended_at) == (0, 0.0, 0.5)
    assert (second.turn, second.first_text_at, second.flushed_at) == (1, 10.0, 10.0)
    assert (second.first_audio_at, second.ended_at) == (10.75, 11.0)
    assert first.audio_chunks + second.audio_chunks == len(audio(pair))


def test_stream_cancelled_turn() -> None:
    pair = SessionPair.stream()
    c = pair.client
    c.send_text("Hello there. Second sentence.", at(pair, 0.0), flush=True)
    pair.deliver_to_server()
    first_audio_at(pair, 0.2)
    delivered = len(audio(pair))
    c.cancel(at(pair, 0.3))
    at(pair, 0.7)
    pair.pump()
    [stop] = pair.events_of(Interrupted)
    m = stop.metrics
    assert stop.acknowledged and m.cancelled
    assert (m.first_text_at, m.flushed_at, m.first_audio_at, m.ended_at) == (0.0, 0.0, 0.2, 0.7)
    assert m.audio_chunks == delivered == 1
    assert m.audio_seconds == audio(pair)[0].duration_s


def test_stream_cancel_before_the_flush_has_no_flush_time() -> None:
    c = StreamClientSession(voice_id=1)
    c.send_text("Hello", 0.0)
    c.cancel(0.5)
    c.receive_message('{"interrupted": true}', 0.75)
    [stop] = [e for e in c.events() if isinstance(e, Interrupted)]
    assert stop.metrics == TurnMetrics(0, None, 0.0, None, None, 0.75, 0.0, 0, True, 0)
    assert stop.metrics.flush_to_first_audio is None
    assert stop.metrics.time_to_first_audio is None


def test_stream_cancel_timeout_ends_at_the_timeout() -> None:
    c = StreamClientSession(voice_id=1, cancel_timeout=5.0)
    c.send_text("Hello.", 0.0, flush=True)
    c.cancel(1.0)
    c.handle_timeout(6.5)
    [stop] = [e for e in c.events() if isinstance(e, Interrupted)]
    assert not stop.acknowledged
    assert stop.metrics == TurnMetrics(0, None, 0.0, 0.0, None, 6.5, 0.0, 0, True, 0)


def test_stream_end_turn_counts_as_the_flush() -> None:
    pair = SessionPair.stream()
    c = pair.client
    c.send_text("Closing now.", at(pair, 0.0))
    c.end_turn(at(pair, 0.4))
    at(pair, 0.9)
    pair.pump()
    [closed] = pair.events_of(TurnClosed)
    assert (closed.metrics.flushed_at, closed.metrics.first_audio_at) == (0.4, 0.9)


def test_stream_connection_lost_reports_times_and_replay_keeps_them() -> None:
    c = StreamClientSession(voice_id=1)
    c.send_text("Lost ", 1.0)
    c.send_text("turn.", 1.5, flush=True)
    c.connection_lost(1012, "restarting", 2.25)
    events = list(c.events())
    [aborted] = [e for e in events if isinstance(e, TurnAborted)]
    assert aborted.metrics == TurnMetrics(0, None, 1.0, 1.5, None, 2.25, 0.0, 0, False, 0)
    [terminated] = [e for e in events if isinstance(e, ConnectionTerminated)]
    [replay] = terminated.replay
    assert (replay.first_text_at, replay.flushed_at) == (1.0, 1.5)


def test_replay_on_a_fresh_session_keeps_the_first_times() -> None:
    lost = StreamClientSession(voice_id=1)
    lost.send_text("Say this ", 1.0)
    lost.send_text("again.", 1.25, flush=True)
    lost.connection_lost(1012, "restarting", 2.0)
    [terminated] = [e for e in lost.events() if isinstance(e, ConnectionTerminated)]
    [replay] = terminated.replay
    pair = SessionPair.stream()
    pair.client.replay(replay, at(pair, 3.0))
    at(pair, 3.5)
    pair.pump()
    [closed] = pair.events_of(TurnClosed)
    m = closed.metrics
    assert (m.first_text_at, m.flushed_at, m.first_audio_at, m.ended_at) == (1.0, 1.25, 3.5, 3.5)
    assert m.time_to_first_audio == 2.5  # the loss and the replay are in the latency


def test_multi_replay_keeps_the_first_times() -> None:
    lost = MultiClientSession(voice_id=1)
    lost.create_context("a", 0.0)
    lost.send_text("a", "Say this again.", 0.5, flush=True)
    lost.connection_lost(1012, "restarting", 1.0)
    [terminated] = [e for e in lost.events() if isinstance(e, ConnectionTerminated)]
    [replay] = terminated.replay
    pair = SessionPair.multi()
    pair.client.replay(replay, at(pair, 2.0))
    at(pair, 2.25)
    pair.pump()
    [final] = pair.events_of(TurnFinal)
    m = final.metrics
    assert (m.first_text_at, m.flushed_at, m.first_audio_at, m.ended_at) == (
        0.5, 0.5, 2.25, 2.25)


def test_tts_request_exact_times() -> None:
    pair = SessionPair.tts()
    pair.client.request("One shot of speech.", at(pair, 2.0))
    pair.deliver_to_server()
    first_audio_at(pair, 2.3)
    at(pair, 4.0)
    pair.pump()
    [final] = pair.events_of(RequestFinal)
    chunks = audio(pair)
    assert final.metrics == TurnMetrics(
        0, None, 2.0, 2.0, 2.3, 4.0, sum(e.duration_s for e in chunks), len(chunks), False, 0
    )
    assert final.metrics.time_to_first_audio == final.metrics.flush_to_first_audio


def test_tts_cancelled_request() -> None:
    pair = SessionPair.tts()
    pair.client.request("First sentence. Second sentence.", at(pair, 0.0))
    pair.deliver_to_server()
    first_audio_at(pair, 0.125)
    pair.client.cancel(at(pair, 0.25))
    at(pair, 0.5)
    pair.pump()
    [stop] = pair.events_of(Interrupted)
    assert stop.metrics is not None and stop.metrics.cancelled
    assert (stop.metrics.first_audio_at, stop.metrics.ended_at) == (0.125, 0.5)
    assert stop.metrics.audio_chunks == 1


def test_multi_flush_cycles_and_context_totals() -> None:
    pair = SessionPair.multi()
    c = pair.client
    c.create_context("a", at(pair, 0.0))
    c.send_text("a", "Hello there.", at(pair, 0.1))
    c.flush("a", at(pair, 0.2))
    c.send_text("a", "Next one.", at(pair, 0.3))  # sent before cycle 0's final: cycle 1's
    c.flush("a", at(pair, 0.4))
    pair.deliver_to_server()
    first_audio_at(pair, 1.0)
    at(pair, 2.0)
    pair.pump()
    finals = pair.events_of(TurnFinal)
    assert [f.turn for f in finals] == [0, 1]
    m0, m1 = finals[0].metrics, finals[1].metrics
    assert (m0.first_text_at, m0.flushed_at, m0.first_audio_at, m0.ended_at) == (
        0.1, 0.2, 1.0, 2.0)
    assert (m1.first_text_at, m1.flushed_at, m1.first_audio_at, m1.ended_at) == (
        0.3, 0.4, 2.0, 2.0)
    assert m0.context_id == m1.context_id == "a" and not (m0.cancelled or m1.cancelled)
    chunks = audio(pair, "a")
    assert m0.audio_chunks + m1.audio_chunks == len(chunks)
    c.close_context("a", at(pair, 3.0))
    pair.pump()
    [closed] = pair.events_of(ContextClosed)
    total = closed.metrics
    assert total is not None and total.context_id == "a" and not total.cancelled
    assert (total.first_text_at, total.flushed_at, total.first_audio_at, total.ended_at) == (
        0.1, 0.2, 1.0, 3.0)
    assert total.audio_chunks == len(chunks)
    assert total.audio_seconds == m0.audio_seconds + m1.audio_seconds


def test_multi_cancelled_cycle_and_immediate_close() -> None:
    pair = SessionPair.multi()
    c = pair.client
    c.create_context("a", at(pair, 0.0))
    c.send_text("a", "First sentence. Second sentence.", at(pair, 0.1), flush=True)
    pair.deliver_to_server()
    first_audio_at(pair, 0.5)
    c.cancel(at(pair, 0.6), "a")
    at(pair, 0.9)
    pair.pump()
    [stop] = pair.events_of(Interrupted)
    m = stop.metrics
    assert stop.context_id == "a" and m.cancelled and m.turn == 0
    assert (m.first_text_at, m.flushed_at, m.first_audio_at, m.ended_at) == (0.1, 0.1, 0.5, 0.9)
    assert m.audio_chunks == 1
    c.send_text("a", "More.", at(pair, 1.0))
    c.close_context("a", at(pair, 1.1), immediate=True)
    at(pair, 1.5)
    pair.pump()
    [closed] = pair.events_of(ContextClosed)
    assert closed.metrics.cancelled and closed.metrics.ended_at == 1.5
    assert closed.metrics.audio_chunks == len(audio(pair, "a")) == 1


def test_multi_context_created_with_text_counts_it() -> None:
    c = MultiClientSession(voice_id=1)
    c.create_context("a", 0.5, text="Hi.")
    c.flush("a", 0.75)
    c.receive_message('{"final": true, "context_id": "a"}', 1.0)
    [final] = [e for e in c.events() if isinstance(e, TurnFinal)]
    assert final.metrics == TurnMetrics(0, "a", 0.5, 0.75, None, 1.0, 0.0, 0, False, 0)


def test_stream_final_carries_no_metrics() -> None:
    pair = SessionPair.stream()
    pair.client.send_text("Hi there.", 0.0, flush=True)
    pair.pump()
    finals = pair.events_of(TurnFinal)
    assert finals and all(f.metrics is None for f in finals)  # stream: TurnClosed carries them


# -- property: every terminal event's metrics match what the session delivered, when ------------
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["text", "text", "text", "flush", "cancel", "engine", "engine", "pump"]),
        st.sampled_from(["Hello", " there.", " How", " are you?", " Fine. ", "Ok"]),
        st.integers(min_value=0, max_value=3),  # clock step, in quarter seconds (exact floats)
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_ACTIONS)
def test_stream_metrics_match_the_delivered_events(actions: list[tuple[str, str, int]]) -> None:
    pair = SessionPair.stream(client_kwargs={"idle_flush_guard": None})
    c = pair.client
    stamped: list[tuple[float, Any]] = []  # every event with the clock it was emitted at
    flushed: dict[int, float] = {}

    def collect() -> None:
        events = pair.client_events()
        stamped.extend((pair.now, e) for e in events[len(stamped):])

    for what, text, step in actions:
        pair.clock.now += step / 4
        if what == "text":
            c.send_text(text, pair.now)
        elif what == "flush" and c.current_turn is not None:
            flushed[c.flush(pair.now)] = pair.now
        elif what == "cancel":
            c.cancel(pair.now)
        elif what == "engine":
            pair.deliver_to_server()
            pair.step_engine()
            pair.deliver_to_client()
        elif what == "pump":
            pair.pump()
        collect()
    pair.clock.now += 1
    if c.current_turn is not None:
        flushed[c.flush(pair.now)] = pair.now
    pair.pump()
    collect()

    started = {e.turn: t for t, e in stamped if isinstance(e, TurnStarted)}
    terminals = [(t, e) for t, e in stamped if isinstance(e, TurnClosed)
                 or (isinstance(e, Interrupted) and e.turn is not None)]
    assert sorted(e.turn for _, e in terminals) == sorted(started)  # one terminal per turn
    for ended, event in terminals:
        m = event.metrics
        assert m is not None and m.turn == event.turn and m.context_id is None
        chunks = [(t, a) for t, a in stamped if isinstance(a, AudioChunk) and a.turn == m.turn]
        assert m.audio_chunks == len(chunks)
        assert m.audio_seconds == sum(a.duration_s for _, a in chunks)
        assert m.first_audio_at == (chunks[0][0] if chunks else None)
        assert m.first_text_at == started[m.turn]
        assert m.flushed_at == flushed.get(m.turn)
        assert m.ended_at == ended
        assert m.cancelled is isinstance(event, Interrupted)
        assert m.reconnects == 0


_MULTI_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["text", "text", "text", "flush", "cancel", "engine", "engine", "pump"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["Hello", " there.", " How", " are you?", " Fine. "]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_MULTI_ACTIONS, st.booleans())
def test_multi_metrics_match_the_delivered_events(
    actions: list[tuple[str, str, str, int]], immediate: bool
) -> None:
    pair = SessionPair.multi()
    c = pair.client
    stamped: list[tuple[float, Any]] = []

    def collect() -> None:
        events = pair.client_events()
        stamped.extend((pair.now, e) for e in events[len(stamped):])

    for cid in ("a", "b"):
        c.create_context(cid, pair.now)
    for what, cid, text, step in actions:
        pair.clock.now += step / 4
        if what == "text":
            c.send_text(cid, text, pair.now)
        elif what == "flush":
            c.flush(cid, pair.now)
        elif what == "cancel":
            c.cancel(pair.now, cid)
        elif what == "engine":
            pair.deliver_to_server()
            pair.step_engine()
            pair.deliver_to_client()
        elif what == "pump":
            pair.pump()
        collect()
    pair.clock.now += 1
    c.close_context("a", pair.now, immediate=immediate)
    c.close_context("b", pair.now)
    pair.pump()
    collect()

    for cid in ("a", "b"):
        chunks = [(t, e) for t, e in stamped if isinstance(e, AudioChunk) and e.context_id == cid]
        cycles = [(t, e) for t, e in stamped if isinstance(e, TurnFinal | Interrupted)
                  and e.context_id == cid]
        counted = 0
        for ended, event in cycles:
            m = event.metrics
            assert m is not None and (m.turn, m.context_id) == (event.turn, cid)
            mine = [(t, a) for t, a in chunks if a.turn == m.turn]
            counted += len(mine)
            assert m.audio_chunks == len(mine)
            assert m.audio_seconds == sum(a.duration_s for _, a in mine)
            assert m.first_audio_at == (mine[0][0] if mine else None)
            assert m.ended_at == ended
            assert m.cancelled is isinstance(event, Interrupted)
            if m.first_text_at is not None and m.flushed_at is not None and not m.cancelled:
                assert m.first_text_at <= m.flushed_at  # text after a flush is the next cycle's
            if m.first_audio_at is not None:
                assert m.first_text_at is not None and m.first_text_at <= m.first_audio_at
        [(closed_at, closed)] = [(t, e) for t, e in stamped
                                 if isinstance(e, ContextClosed) and e.context_id == cid]
        total = closed.metrics
        assert total is not None and total.ended_at == closed_at
        assert total.audio_chunks == len(chunks) >= counted
        assert total.audio_seconds == pytest.approx(sum(a.duration_s for _, a in chunks))
        assert total.first_audio_at == (chunks[0][0] if chunks else None)
        assert total.cancelled is (immediate and cid == "a")
