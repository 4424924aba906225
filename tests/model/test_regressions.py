"""Regression tests for bugs the model tests and fuzzers found in the protocol core."""

from __future__ import annotations

import pytest

from kugelwire.protocol import MultiClientSession, StreamClientSession
from kugelwire.testing import SessionPair


def test_stream_idle_guard_deadline_not_reported_after_close_socket() -> None:
    """Found by the stream model: after ``close_socket()`` with a turn still open, the idle
    guard's deadline stayed in ``next_deadline()`` but ``handle_timeout`` never acted on it, so
    a transport waking at that deadline would spin forever."""
    client = StreamClientSession(voice_id=1)
    client.send_text("Hello", 0.0)
    assert client.next_deadline() == 4.5
    client.close_socket(0.1)
    assert client.next_deadline() is None
    client.handle_timeout(10.0)
    assert client.next_deadline() is None


def test_multi_keepalive_deadline_not_reported_after_close_socket() -> None:
    """Same bug for the multi keep-alive timer."""
    client = MultiClientSession(keepalive_interval=1.0)
    client.create_context("a", 0.0, voice_id=1)
    assert client.next_deadline() == 1.0
    client.close_socket(0.1)
    assert client.next_deadline() is None


def test_pair_advance_terminates_after_close_socket_with_open_turn() -> None:
    pair = SessionPair.stream(voice_id=1)
    pair.client.send_text("Hello there", pair.now)
    pair.client.close_socket(pair.now)
    pair.advance(30.0, pump=False)  # used to loop forever at t=4.5
    pair.pump()
    assert pair.client.terminated


def test_pair_advance_reports_an_unconsumed_deadline() -> None:
    class Stuck(StreamClientSession):
        def next_deadline(self) -> float | None:
            return 1.0

    pair = SessionPair(Stuck(voice_id=1), SessionPair.stream().server)
    with pytest.raises(RuntimeError, match="not consumed"):
        pair.advance(2.0)


def test_multi_close_socket_starts_the_cycle_its_final_ends() -> None:
    """Found by the multi model: close_socket() makes the server close every open context
    gracefully, which sends a final for each; the client reported TurnFinal for a cycle it
    had never announced with TurnStarted (the cycle after an earlier flush)."""
    from kugelwire.protocol._events import TurnFinal, TurnStarted

    pair = SessionPair.multi(language="en")
    pair.client.create_context("a", pair.now, voice_id=1)
    pair.client.flush("a", pair.now)
    pair.pump()
    pair.client.close_socket(pair.now)
    pair.pump()
    started = {(e.context_id, e.turn) for e in pair.events_of(TurnStarted)}
    finals = [(e.context_id, e.turn) for e in pair.events_of(TurnFinal)]
    assert finals == [("a", 0), ("a", 1)]
    assert set(finals) <= started


def test_max_buffer_cut_right_after_a_terminator_leaves_no_run_behind() -> None:
    """Found by tests/protocol/test_chunker.py's random property test while running the suite
    for this work: a max-buffer cut exactly after "." left a terminator run pointing at the
    empty rest, so a closing quote that followed became a chunk of its own, cut as a
    "boundary" when the confirm timer fired."""
    from kugelwire.protocol._chunker import Chunker

    c = Chunker(chunk_length_schedule=[1], max_buffer_length=7)
    out = c.feed('hellohellohellohello."', 0.0)
    assert c.next_deadline() != 0.05  # no pending terminator run (only the stale timer)
    out += c.flush(2.0)
    assert [(ch.text, ch.reason) for ch in out] == [
        ("hellohe", "max_buffer"), ("llohell", "max_buffer"), ("ohello.", "max_buffer"),
        ('"', "stale"),
    ]
