"""Server role of /ws/tts/multi (DECISIONS 12-17) and /ws/tts (DECISIONS 21-22)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._server import (
    MultiServerSession,
    ServerLimits,
    SynthesisCancelled,
    SynthesisRequested,
    TTSServerSession,
    _ServerSession,
)
from kugelwire.testing import PairEngine, SessionPair


class Driver:
    def __init__(self, server: _ServerSession, *, engine: bool = True) -> None:
        self.server = server
        self.now = 0.0
        self.out: list[dict[str, Any]] = []
        self.requests: list[SynthesisRequested] = []
        self.cancelled: list[SynthesisCancelled] = []
        self.engine = engine

    def send(self, obj: dict[str, Any], at: float | None = None) -> list[dict[str, Any]]:
        if at is not None:
            self.now = at
        self.server.receive_message(json.dumps(self.with_voice(obj)), self.now)
        return self.collect()

    def with_voice(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` as a real client sends it: text names a voice (on multi, the context's)."""
        if "text" not in obj or "voice_id" in obj or "voice_settings" in obj:
            return obj
        if isinstance(self.server, MultiServerSession):
            return obj if "context_id" not in obj else {**obj, "voice_settings": {"voice_id": 1}}
        return {**obj, "voice_id": 1}

    def finish(self, ev: SynthesisRequested, samples: int = 2400) -> None:
        self.server.send_audio(ev.ref, b"\x00\x00" * samples, self.now)
        self.server.complete_chunk(ev.ref, 1.0, self.now)

    def collect(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        while True:
            msgs = [json.loads(m) for m in self.server.messages_to_send()]
            new.extend(msgs)
            events = list(self.server.events())
            if not msgs and not events:
                break
            for ev in events:
                if isinstance(ev, SynthesisCancelled):
                    self.cancelled.append(ev)
                else:
                    self.requests.append(ev)
                    if self.engine:
                        self.finish(ev)
        self.out.extend(new)
        return new

    def advance(self, to: float) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        while (d := self.server.next_deadline()) is not None and d <= to:
            self.now = max(self.now, d)
            self.server.handle_timeout(self.now)
            new.extend(self.collect())
        self.now = to
        return new


def multi(engine: bool = True, limits: ServerLimits | None = None) -> Driver:
    return Driver(MultiServerSession(limits=limits), engine=engine)


def test_transcript_a4() -> None:
    d = multi()
    out = d.send({"text": " ", "context_id": "narrator", "voice_settings": {"voice_id": 1071},
                  "model_id": "kugel-3", "sample_rate": 24000, "language": "en"})
    assert out == [{"context_created": True, "context_id": "narrator"}]
    out = d.send({"text": " ", "context_id": "character", "voice_settings": {"voice_id": 1072}})
    assert out == [{"context_created": True, "context_id": "character"}]
    out = d.send({"text": "The story begins.", "context_id": "narrator", "flush": True})
    assert [next(iter(f)) for f in out] == ["generation_started", "audio", "chunk_complete",
                                            "final"]
    assert all(f["context_id"] == "narrator" for f in out)
    assert out[0]["text"] == " The story begins."
    narr = d.requests[-1].params
    assert narr.voice_id == 1071 and narr.sample_rate == 24000
    d.send({"text": "Hello, I'm the main character!", "context_id": "character", "flush": True})
    assert d.requests[-1].params.voice_id == 1072
    assert d.requests[-1].params.sample_rate == 24000  # session-wide config is shared
    out = d.send({"close_context": True, "context_id": "narrator"})
    assert out[0] == {"final": True, "context_id": "narrator"}
    assert out[1]["context_closed"] is True and out[1]["usage"]["audio_seconds"] == 0.1
    out = d.send({"close_context": True, "context_id": "character", "immediate": True})
    assert [next(iter(f)) for f in out] == ["context_closed"]
    out = d.send({"close_socket": True})
    assert out == [{"session_closed": True, "total_audio_seconds": 0.2}]
    assert d.server.close_code == 1000


def test_rule12_cap_20_counting_closing_contexts_socket_stays() -> None:
    d = multi(engine=False)
    for i in range(20):
        d.send({"text": " ", "context_id": f"c{i}", "voice_settings": {"voice_id": 1}})
    d.send({"text": "Speaking.", "context_id": "c0"})
    d.send({"close_context": True, "context_id": "c0"})  # closing: still counts
    out = d.send({"text": " ", "context_id": "c20"})
    assert out == [{"error": "Too many concurrent contexts", "error_code": "TOO_MANY_CONTEXTS",
                    "code": 429, "context_id": "c20"}]
    assert d.server.close_code is None
    d.finish(d.requests[0])
    d.collect()
    out = d.send({"text": " ", "context_id": "c20"})
    assert out == [{"context_created": True, "context_id": "c20"}]


def test_rule13_interrupted_echoes_context_and_context_stays_open() -> None:
    d = multi(engine=False)
    d.send({"text": "Long text here, still going", "context_id": "a"})
    d.send({"text": "Other context speaks.", "context_id": "b", "flush": True})
    out = d.send({"cancel": True, "context_id": "a"})
    assert out == [{"interrupted": True, "context_id": "a"}]
    assert d.server.contexts == ("a", "b")
    d.send({"text": "Again.", "context_id": "a", "flush": True})
    assert d.requests[-1].ref.context_id == "a"


def test_rule14_immediate_close_no_final_usage_when_audio() -> None:
    d = multi(engine=False)
    d.send({"text": "Talking now, and on.", "context_id": "a"})
    assert d.requests == []  # a trailing "." is confirmed only after a short delay
    d.advance(0.05)
    ev = d.requests[0]
    d.server.send_audio(ev.ref, b"\x00\x00" * 2400, d.now)
    assert [m["audio"][:4] for m in d.collect()] == ["AAAA"]
    out = d.send({"close_context": True, "context_id": "a", "immediate": True})
    assert out == [{"context_closed": True, "context_id": "a", "usage": {
        "audio_seconds": 0.1, "characters": 20, "cost_cents": None, "cost_unavailable": True,
        "model_id": "kugel-3"}}]
    assert [c.ref for c in d.cancelled] == [ev.ref]
    assert d.server.send_audio(ev.ref, b"\x00\x00", d.now) is False


def test_rule15_inactivity_timeout_then_closed_and_keepalives_reset_it() -> None:
    d = multi()
    d.send({"text": " ", "context_id": "a"}, at=0.0)
    d.send({"text": " ", "context_id": "b", "inactivity_timeout": 2}, at=0.0)
    d.send({"text": "", "context_id": "a"}, at=15.0)  # keep-alive
    d.send({"keep_alive": True, "context_id": "a"}, at=30.0)  # legacy keep-alive
    out = d.advance(49.0)
    assert out[:2] == [{"context_timeout": True, "context_id": "b"},
                       {"context_closed": True, "context_id": "b"}]
    assert d.server.contexts == ("a",)
    out = d.advance(50.0)
    assert out == [{"context_timeout": True, "context_id": "a"},
                   {"context_closed": True, "context_id": "a"}]


def test_rule16_flush_with_nothing_buffered_still_finals() -> None:
    d = multi()
    d.send({"text": " ", "context_id": "a"})
    assert d.send({"flush": True, "context_id": "a"}) == [{"final": True, "context_id": "a"}]


def test_rule17_config_only_frame_without_context_accepted() -> None:
    d = multi()
    assert d.send({"text": "", "voice_id": 1, "model_id": "kugel-3"}) == []
    assert d.server.contexts == ()


def test_multi_bad_input_table() -> None:
    d = multi()
    assert d.send({"text": "hi"})[0]["error_code"] == "VALIDATION_ERROR"  # no context_id
    out = d.send({"close_context": True, "context_id": "nope"})
    assert out[0]["error_code"] == "VALIDATION_ERROR" and out[0]["context_id"] == "nope"
    d.send({"close_socket": True})
    assert d.server.close_code == 1000


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["create", "text", "flush", "close", "immediate", "cancel", "engine",
                     "advance", "deliver"]),
    st.integers(0, 3)), max_size=40))
# Found by CI: the context times out with its text still on the wire.
@example(script=[("create", 0), ("text", 0), ("deliver", 1), ("advance", 1), ("advance", 3),
                 ("advance", 3)])
def test_multi_pair_contexts_end_exactly_once(script: list[tuple[str, int]]) -> None:
    from kugelwire.protocol import (
        AudioChunk,
        ContextClosed,
        ContextCreated,
        ContextTimeout,
        ErrorCode,
        LocalProtocolError,
        ServerError,
    )

    pair = SessionPair.multi(engine=PairEngine(auto=False, pieces=2))
    created: list[str] = []
    closed_immediately: dict[str, int] = {}
    for op, k in script:
        cid = f"ctx{k}"
        try:
            if op == "create":
                pair.client.create_context(cid, pair.now, voice_id=k)
                created.append(cid)
            elif op == "text":
                pair.client.send_text(cid, "Some words. More", pair.now)
            elif op == "flush":
                pair.client.flush(cid, pair.now)
            elif op == "close":
                pair.client.close_context(cid, pair.now)
            elif op == "immediate":
                closed_immediately[cid] = len(pair.client_events())
                pair.client.close_context(cid, pair.now, immediate=True)
            elif op == "cancel":
                pair.client.cancel(pair.now, cid)
            elif op == "engine":
                pair.step_engine()
            elif op == "advance":
                pair.advance(k * 3.0, pump=False)
            else:
                pair.deliver_to_server(k)
                pair.deliver_to_client(k)
        except LocalProtocolError:
            closed_immediately.pop(cid, None) if op == "immediate" else None
    for cid in list(pair.client.open_contexts):
        with contextlib.suppress(LocalProtocolError):
            pair.client.close_context(cid, pair.now)
    for _ in range(20):
        pair.pump(engine=True)
        pair.advance(25.0)
    events = pair.client_events()
    # The one error allowed: the server timed a context out (inactivity) while the client's
    # text for it was still on the wire; that text then names a context the server no longer
    # has, so it opens a new one without a voice and answers MISSING_VOICE_ID, as the service
    # does. Any other error is a bug.
    timed_out = {e.context_id for e in events if isinstance(e, ContextTimeout)}
    errors = [e for e in events if isinstance(e, ServerError)]
    assert all(e.code is ErrorCode.MISSING_VOICE_ID and e.context_id in timed_out
               for e in errors), errors
    closed = [e.context_id for e in events if isinstance(e, ContextClosed)]
    made = [e.context_id for e in events if isinstance(e, ContextCreated)]
    assert sorted(closed) == sorted(created)
    assert len(made) <= len(created)
    assert pair.client.open_contexts == ()
    for cid, idx in closed_immediately.items():
        later = events[idx:]
        end = next(i for i, e in enumerate(later) if isinstance(e, ContextClosed)
                   and e.context_id == cid)
        assert not any(isinstance(e, AudioChunk) and e.context_id == cid for e in later[:end])


# -- /ws/tts --------------------------------------------------------------------------------------

def test_transcript_a5_and_queueing() -> None:
    d = Driver(TTSServerSession(), engine=False)
    d.send({"text": "Hello, this is streaming audio.", "model_id": "kugel-3", "voice_id": 1071,
            "cfg_scale": 2.0})
    d.send({"text": "Next request on the same socket.", "voice_id": 1071})
    assert len(d.requests) == 1  # queued in order (DECISIONS 21)
    d.finish(d.requests[0], 4800)
    d.collect()
    final = next(f for f in d.out if "final" in f)
    assert final["chunks"] == 1 and final["total_samples"] == 4800 and final["dur_ms"] == 200
    assert final["usage"]["characters"] == 31
    assert final["debug"]["original_text"] == "Hello, this is streaming audio."
    assert not any("generation_started" in f or "chunk_complete" in f for f in d.out)
    assert len(d.requests) == 2


def test_tts_cancel_and_validation_errors_are_per_request() -> None:
    d = Driver(TTSServerSession(), engine=False)
    d.send({"text": "A long request."})
    d.send({"text": "Queued one."})
    out = d.send({"cancel": True})
    assert out[0] == {"interrupted": True}
    assert len(d.cancelled) == 1 and len(d.requests) == 2
    d.finish(d.requests[1])
    d.collect()
    out = d.send({"text": "   "})
    assert out == [{"error": "text required", "error_code": "VALIDATION_ERROR", "code": 400}]
    out = d.send({"text": "x", "speed": 9})
    assert out[0]["error_code"] == "VALIDATION_ERROR"
    assert d.server.close_code is None
    assert d.send({"cancel": True}) == [{"interrupted": True}]


def test_tts_pair_requests() -> None:
    from kugelwire.protocol._events import AudioChunk, RequestFinal

    pair = SessionPair.tts(voice_id=1)
    pair.client.request("One. Two sentences here.", pair.now)
    pair.client.request("Second request.", pair.now, speed=1.1)
    pair.pump()
    finals = pair.events_of(RequestFinal)
    assert [f.turn for f in finals] == [0, 1]
    assert finals[0].usage is not None and finals[0].usage.characters == 24
    audio = pair.events_of(AudioChunk)
    assert {a.turn for a in audio} == {0, 1}
    assert pair.engine.requested[-1].params.speed == 1.1


def test_close_that_crossed_context_closed_is_dropped_not_an_error() -> None:
    d = multi()
    d.send({"text": " ", "context_id": "a"})
    assert d.send({"close_context": True, "context_id": "a"}) == [
        {"final": True, "context_id": "a"}, {"context_closed": True, "context_id": "a"}]
    # a second close (e.g. an immediate one sent before the first was answered) and a flush
    # for the tombstoned id are late frames: dropped and counted
    assert d.send({"close_context": True, "context_id": "a", "immediate": True}) == []
    assert d.send({"flush": True, "context_id": "a"}) == []
    assert d.server.late_frames == 2
    # text reuses the id: a fresh context
    assert d.send({"text": "Hi", "context_id": "a"}) == [
        {"context_created": True, "context_id": "a"}]
    # an id never seen is still an error
    assert d.send({"close_context": True, "context_id": "zz"})[0]["error_code"] == (
        "VALIDATION_ERROR")


def test_each_flush_cycle_starts_the_chunk_schedule_over() -> None:
    """A context's flush-cycle is spoken like a new turn: its first chunk is short again (the
    schedule's first entry), not held to the later, longer minimums."""
    d = multi()
    texts = []
    for _ in range(3):
        d.out.clear()
        d.send({"text": "Hello. World is big. Again here.", "context_id": "a", "flush": True})
        d.advance(d.now + 1.0)
        texts.append([m["text"] for m in d.out if "generation_started" in m])
    assert texts[0] == ["Hello.", " World is big. Again here."]
    assert texts[1] == texts[0] and texts[2] == texts[0]


def test_each_flush_gets_its_final_right_after_its_own_audio() -> None:
    """REFERENCE §8.3: ``final`` comes once everything admitted before *that* flush is
    delivered, even with the context's next flush already queued behind it."""
    d = multi(engine=False)
    d.send({"text": "First line.", "context_id": "a", "flush": True})
    d.send({"text": "Second line.", "context_id": "a", "flush": True})
    while d.requests:
        ev = d.requests.pop(0)
        d.finish(ev)
        d.collect()
    kinds = [next(k for k in ("generation_started", "audio", "chunk_complete", "final",
                              "context_created") if k in m) for m in d.out]
    assert kinds == ["context_created",
                     "generation_started", "audio", "chunk_complete", "final",
                     "generation_started", "audio", "chunk_complete", "final"]
    audio = [m for m in d.out if "audio" in m]
    assert [m["idx"] for m in audio] == [0, 0]  # idx restarts with each flush-cycle


def test_pair_multi_two_flushes_map_audio_to_the_right_cycle() -> None:
    from kugelwire.protocol._events import AudioChunk, TurnFinal

    pair = SessionPair.multi()
    pair.client.create_context("a", pair.now, voice_id=1)
    pair.client.send_text("a", "One two three.", pair.now, flush=True)
    pair.client.send_text("a", "Four five.", pair.now, flush=True)
    for _ in range(10):
        pair.pump(engine=True)
        pair.advance(0.1)
    events = pair.client_events()
    finals = [e.turn for e in events if isinstance(e, TurnFinal)]
    assert finals == [0, 1]
    per_cycle = {t: sum(e.samples for e in events if isinstance(e, AudioChunk) and e.turn == t)
                 for t in finals}
    assert per_cycle[0] > per_cycle[1] > 0  # three words vs two: audio went to its own cycle


def test_tts_restart_with_a_queued_request_closes_after_the_current_one() -> None:
    # A restarting server (1012) finishes the request being spoken and starts nothing new: the
    # queued request, which has no audio yet, is the client's to replay after reconnecting.
    d = Driver(TTSServerSession(), engine=False)
    d.send({"text": "Being spoken."})
    d.send({"text": "Queued behind it."})
    d.server.shutdown(d.now)
    assert d.server.close_code is None  # busy: the current request finishes first
    d.send({"text": "Sent after the restart began."})
    assert len(d.requests) == 1
    d.finish(d.requests[0])
    out = d.collect()
    assert [f for f in out if "final" in f]
    assert d.server.close_code == 1012
    assert len(d.requests) == 1 and d.server.held_chars() == 0
    assert not any("error" in f for f in d.out)
    assert d.send({"text": "After the close."}) == []


def test_tts_restart_then_cancel_closes_at_once() -> None:
    d = Driver(TTSServerSession(), engine=False)
    d.send({"text": "Being spoken."})
    d.send({"text": "Queued behind it."})
    d.server.shutdown(d.now, 1013)
    out = d.send({"cancel": True})
    assert out == [{"interrupted": True}]
    assert len(d.cancelled) == 1 and len(d.requests) == 1
    assert d.server.close_code == 1013 and d.server.held_chars() == 0


def test_tts_restart_when_idle_closes_at_once() -> None:
    d = Driver(TTSServerSession(), engine=False)
    d.send({"text": "Done before the restart."})
    d.finish(d.requests[0])
    d.collect()
    assert d.server.close_code is None
    d.server.shutdown(d.now)
    assert d.server.close_code == 1012
