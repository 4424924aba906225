"""The public test helpers: kugelwire.testing works without hypothesis; the pair's options."""

from __future__ import annotations

import importlib
import sys

import pytest
from hypothesis import given, settings

from kugelwire.protocol import AudioChunk, TurnClosed, parse_server_message
from kugelwire.testing import FakeClock, SessionPair
from kugelwire.testing_strategies import server_frames, token_streams


def test_testing_imports_without_hypothesis(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "hypothesis" or m.startswith("hypothesis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # import hypothesis -> ImportError
    monkeypatch.delitem(sys.modules, "kugelwire.testing", raising=False)
    module = importlib.import_module("kugelwire.testing")
    assert module.SessionPair is not None
    monkeypatch.delitem(sys.modules, "kugelwire.testing_strategies", raising=False)
    with pytest.raises(ImportError):
        importlib.import_module("kugelwire.testing_strategies")


def test_fake_clock_only_moves_forward() -> None:
    clock = FakeClock()
    assert clock.advance(1.5) == 1.5
    with pytest.raises(ValueError):
        clock.advance(-0.1)


def test_collect_events_false_leaves_events_to_the_caller() -> None:
    pair = SessionPair.stream(voice_id=1, collect_events=False)
    pair.client.send_text("Hello there.", pair.now, flush=True)
    pair.pump()
    assert pair.client_events() == []
    events = list(pair.client.events())
    assert any(isinstance(e, AudioChunk) for e in events)
    assert isinstance(events[-1], TurnClosed)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(server_frames())
def test_server_frames_parse_and_drive_a_client(frames: list[str]) -> None:
    from kugelwire.protocol import StreamClientSession

    client = StreamClientSession(voice_id=1)
    client.send_text("Hi.", 0.0, flush=True)
    for frame in frames:
        parse_server_message(frame)
        client.receive_message(frame, 0.0)
    list(client.events())


@settings(max_examples=100, deadline=None, derandomize=True)
@given(token_streams())
def test_token_streams_are_non_empty_text(tokens: list[str]) -> None:
    assert tokens and all(isinstance(t, str) and t for t in tokens)
