"""Client role of /ws/tts/multi: Appendix A.4, the context cap, demultiplexing, tombstones."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._client import MultiClientSession
from kugelwire.protocol._errors import LocalProtocolError
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ConnectionTerminated,
    ContextClosed,
    ContextCreated,
    ContextTimeout,
    Diagnostic,
    ErrorCode,
    GenerationStarted,
    Interrupted,
    ServerError,
    SessionClosed,
    SettingsUpdated,
    TurnAborted,
    TurnFinal,
    TurnReplay,
    TurnStarted,
    Warning,
)
from kugelwire.protocol._messages import AudioFrame, Usage
from kugelwire.protocol._state import ClientContextState

USAGE = {"audio_seconds": 1.2, "characters": 17, "cost_cents": 0.1, "currency": "eur",
         "model_id": "kugel-3"}  # fmt: skip
USAGE_OBJ = Usage(1.2, 17, 0.1, "eur", False, "kugel-3")


def audio(ctx: str, idx: int, chunk_id: int = 0, samples: int = 4800) -> dict[str, Any]:
    b64 = base64.b64encode(b"\x00\x00" * samples).decode()
    return {"audio": b64, "enc": "pcm_s16le", "context_id": ctx, "idx": idx, "sr": 24000,
            "samples": samples, "chunk_id": chunk_id}  # fmt: skip


def frame_of(obj: dict[str, Any]) -> AudioFrame:
    return AudioFrame(obj["audio"], obj["enc"], obj["idx"], obj["sr"], obj["samples"],
                      obj["chunk_id"], obj["context_id"])  # fmt: skip


def created(ctx: str) -> dict[str, Any]:
    return {"context_created": True, "context_id": ctx}


def ctx_closed(ctx: str, usage: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"context_closed": True, "context_id": ctx}
    if usage:
        out["usage"] = USAGE
    return out


class H:
    def __init__(self, **kwargs: Any) -> None:
        self.s = MultiClientSession(**kwargs)
        self.now = 0.0

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.s.messages_to_send()]

    def feed(self, *frames: dict[str, Any] | str) -> None:
        for f in frames:
            self.s.receive_message(f if isinstance(f, str) else json.dumps(f), self.now)

    def events(self) -> list[Any]:
        return list(self.s.events())


def test_a4_transcript() -> None:
    h = H(model_id="kugel-3", sample_rate=24000, language="en")
    h.s.create_context("narrator", h.now, voice_id=1071)
    assert h.sent() == [
        {"text": " ", "context_id": "narrator", "voice_settings": {"voice_id": 1071},
         "model_id": "kugel-3", "sample_rate": 24000, "language": "en"}
    ]  # fmt: skip
    h.feed(created("narrator"))
    h.s.create_context("character", h.now, voice_id=1072)
    assert h.sent() == [
        {"text": " ", "context_id": "character", "voice_settings": {"voice_id": 1072}}
    ]
    h.feed(created("character"))
    assert h.s.send_text("narrator", "The story begins.", h.now, flush=True) == 0
    h.s.send_text("character", "Hello, I'm the main character!", h.now, flush=True)
    assert h.sent() == [
        {"text": "The story begins.", "context_id": "narrator", "flush": True},
        {"text": "Hello, I'm the main character!", "context_id": "character", "flush": True},
    ]
    na, ca = audio("narrator", 0), audio("character", 0)
    h.feed(
        {"generation_started": True, "context_id": "narrator", "chunk_id": 0,
         "text": "The story begins."},
        na,
        ca,  # interleaved
        {"chunk_complete": True, "context_id": "narrator", "chunk_id": 0,
         "audio_seconds": 0.2, "gen_ms": 150},
        {"final": True, "context_id": "narrator"},
    )  # fmt: skip
    assert h.events() == [
        TurnStarted(0, "narrator"),
        ContextCreated("narrator"),
        TurnStarted(0, "character"),
        ContextCreated("character"),
        GenerationStarted(0, 0, "The story begins.", "narrator"),
        AudioChunk(0, frame_of(na), 0.0, "narrator"),
        AudioChunk(0, frame_of(ca), 0.0, "character"),
        ChunkComplete(0, 0, 0.2, 150.0, "narrator"),
        TurnFinal(0, context_id="narrator"),
    ]
    h.s.close_context("narrator", h.now)
    assert h.sent() == [{"close_context": True, "context_id": "narrator"}]
    assert h.s.context_state("narrator") is ClientContextState.CLOSING
    h.feed({"final": True, "context_id": "narrator"}, ctx_closed("narrator"))
    h.s.close_context("character", h.now, immediate=True)
    assert h.sent() == [{"close_context": True, "context_id": "character", "immediate": True}]
    h.feed(audio("character", 1), ctx_closed("character", usage=False))
    h.s.close_socket(h.now)
    assert h.sent() == [{"close_socket": True}]
    h.feed({"session_closed": True, "total_audio_seconds": 6.1})
    assert h.events() == [
        TurnStarted(1, "narrator"),  # a graceful close flushes: its final ends cycle 1
        TurnFinal(1, context_id="narrator"),
        ContextClosed("narrator", USAGE_OBJ),
        ContextClosed("character", None),
        SessionClosed(6.1),
    ]
    assert h.s.dropped_frames == 1  # the late audio of the immediately-closed context
    assert h.s.open_contexts == ()
    with pytest.raises(LocalProtocolError):
        h.s.create_context("again", h.now)
    h.s.connection_lost(1000, "", h.now)
    assert h.events() == [ConnectionTerminated(1000, "", False, ())]


def test_config_on_first_context_only_then_after_update_config() -> None:
    h = H(model_id="kugel-3")
    h.s.create_context("a", h.now, voice_id=1, cfg_scale=9, max_new_tokens=100)
    h.s.create_context("b", h.now)
    h.s.update_config(language="de")
    h.s.create_context("c", h.now, voice_id=3, text="")
    assert h.sent() == [
        {"text": " ", "context_id": "a", "model_id": "kugel-3",
         "voice_settings": {"voice_id": 1, "cfg_scale": 2.5, "max_new_tokens": 100}},
        {"text": " ", "context_id": "b"},
        {"text": "", "context_id": "c", "model_id": "kugel-3", "language": "de",
         "voice_settings": {"voice_id": 3}},
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["", "x" * 257, 5])
def test_bad_context_ids(bad: Any) -> None:
    h = H()
    with pytest.raises(LocalProtocolError):
        h.s.create_context(bad, h.now)


def test_duplicate_and_unknown_contexts_are_local_errors() -> None:
    h = H()
    h.s.create_context("a", h.now)
    with pytest.raises(LocalProtocolError):
        h.s.create_context("a", h.now)
    for call in (
        lambda: h.s.send_text("nope", "x", h.now),
        lambda: h.s.flush("nope", h.now),
        lambda: h.s.keep_alive("nope", h.now),
        lambda: h.s.close_context("nope", h.now),
        lambda: h.s.cancel(h.now, "nope"),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    h.s.close_context("a", h.now)
    with pytest.raises(LocalProtocolError):
        h.s.send_text("a", "late", h.now)  # closing: takes no more input
    with pytest.raises(LocalProtocolError):
        h.s.send_text("a", 5, h.now)  # type: ignore[arg-type]


# =============================================================================================
# the 20-context cap


def test_21st_context_is_a_local_error_counting_closing_contexts() -> None:
    h = H()
    for i in range(20):
        h.s.create_context(f"c{i}", h.now, voice_id=1)
    with pytest.raises(LocalProtocolError, match="20"):
        h.s.create_context("c20", h.now)
    h.s.close_context("c0", h.now)  # graceful: still counts until context_closed
    h.s.close_context("c1", h.now, immediate=True)  # immediate: counts too
    with pytest.raises(LocalProtocolError):
        h.s.create_context("c20", h.now)
    assert len(h.s.open_contexts) == 20
    h.feed(ctx_closed("c1", usage=False))
    h.s.create_context("c20", h.now)  # a slot freed
    with pytest.raises(LocalProtocolError):
        h.s.create_context("c21", h.now)
    h.feed({"final": True, "context_id": "c0"}, ctx_closed("c0"))
    h.s.create_context("c0", h.now)  # a closed id may be reused
    assert len(h.s.open_contexts) == 20


def test_custom_cap() -> None:
    h = H(max_contexts=2)
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now)
    with pytest.raises(LocalProtocolError):
        h.s.create_context("c", h.now)


def test_too_many_contexts_error_closes_that_context() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now)
    h.feed(created("a"))
    h.events()
    h.feed({"error": "Too many concurrent contexts", "error_code": "TOO_MANY_CONTEXTS",
            "code": 429, "context_id": "b"})  # fmt: skip
    assert h.events() == [
        ServerError(ErrorCode.TOO_MANY_CONTEXTS, "Too many concurrent contexts", 429,
                    "TOO_MANY_CONTEXTS", "b", 0)
    ]  # fmt: skip
    assert h.s.open_contexts == ("a",)
    assert h.s.context_state("b") is ClientContextState.CLOSED
    h.feed(audio("b", 0))  # nothing of it is delivered, nor given to "a"
    assert h.events() == []
    assert h.s.dropped_frames == 1
    with pytest.raises(LocalProtocolError):
        h.s.send_text("b", "x", h.now)
    h.s.create_context("b", h.now)  # may be retried


def test_context_scoped_error_does_not_close_the_context() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.feed(created("a"))
    h.feed({"error": "voice_id is required", "error_code": "MISSING_VOICE_ID", "code": 400,
            "context_id": "a"})  # fmt: skip
    h.feed({"error": "Insufficient credits", "error_code": "INSUFFICIENT_CREDITS", "code": 402})
    evs = h.events()[2:]
    assert [(e.code, e.context_id, e.turn, e.fatal) for e in evs] == [
        (ErrorCode.MISSING_VOICE_ID, "a", 0, False),
        (ErrorCode.INSUFFICIENT_CREDITS, None, None, True),
    ]
    assert h.s.open_contexts == ("a",)


# =============================================================================================
# demultiplexing and tombstones


def test_interleaved_contexts_are_demultiplexed() -> None:
    h = H()
    for c in ("a", "b", "c"):
        h.s.create_context(c, h.now)
        h.s.send_text(c, f"text {c}", h.now, flush=True)
    h.events()
    order = ["a", "b", "a", "c", "b", "a", "c"]
    counters: dict[str, int] = {}
    for c in order:
        i = counters.get(c, 0)
        counters[c] = i + 1
        h.feed(audio(c, i, samples=2400 * (1 + "abc".index(c))))
    evs = h.events()
    assert [e.context_id for e in evs] == order
    for c in "abc":
        mine = [e for e in evs if e.context_id == c]
        assert [e.idx for e in mine] == list(range(counters[c]))
        dur = 0.1 * (1 + "abc".index(c))
        assert [e.offset_s for e in mine] == pytest.approx([dur * k for k in range(len(mine))])


def test_frames_for_unknown_contexts_are_dropped() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.events()
    h.feed(
        audio("ghost", 0),
        {"generation_started": True, "context_id": "ghost", "chunk_id": 0, "text": "x"},
        {"final": True, "context_id": "ghost"},
        ctx_closed("ghost"),
        created("ghost"),
        {"context_timeout": True, "context_id": "ghost"},
        {"audio": "AAA=", "idx": 0},  # no context_id at all
    )
    assert h.events() == []
    assert h.s.dropped_frames == 7


def test_frames_after_context_closed_are_dropped() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now)
    h.s.close_context("a", h.now)
    h.feed(created("a"), created("b"), {"final": True, "context_id": "a"}, ctx_closed("a"))
    h.events()
    h.feed(audio("a", 5), ctx_closed("a"), {"final": True, "context_id": "a"})
    assert h.events() == []
    assert h.s.dropped_frames == 3
    b = audio("b", 0)
    h.feed(b)
    assert h.events() == [AudioChunk(0, frame_of(b), 0.0, "b")]


def test_immediate_close_drops_everything_until_context_closed() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now)
    h.s.send_text("a", "long text", h.now, flush=True)
    h.feed(created("a"), created("b"), audio("a", 0))
    h.events()
    h.s.close_context("a", h.now, immediate=True)
    with pytest.raises(LocalProtocolError):
        h.s.close_context("a", h.now)  # already closing immediately
    h.feed(
        audio("a", 1),
        {"chunk_complete": True, "context_id": "a", "chunk_id": 0},
        {"final": True, "context_id": "a"},
        audio("b", 0),
        ctx_closed("a"),
        audio("a", 2),
    )
    evs = h.events()
    assert [type(e) for e in evs] == [AudioChunk, ContextClosed]
    assert evs[0].context_id == "b"
    assert evs[1] == ContextClosed("a", USAGE_OBJ)
    assert h.s.dropped_frames == 4


def test_graceful_close_delivers_the_tail() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.s.send_text("a", "Some text.", h.now)
    h.feed(created("a"))
    h.s.close_context("a", h.now)
    h.feed(audio("a", 0), {"final": True, "context_id": "a"}, ctx_closed("a"))
    evs = h.events()
    assert [type(e) for e in evs] == [
        TurnStarted, ContextCreated, AudioChunk, TurnFinal, ContextClosed
    ]  # fmt: skip
    with pytest.raises(LocalProtocolError):
        h.s.close_context("a", h.now)  # gone


def test_cancel_one_context() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now)
    h.s.send_text("a", "aaa", h.now, flush=True)
    h.s.send_text("b", "bbb", h.now, flush=True)
    h.feed(created("a"), created("b"))
    h.events()
    h.sent()
    assert h.s.cancel(h.now, "a") == ("a",)
    assert h.sent() == [{"cancel": True, "context_id": "a"}]
    b0 = audio("b", 0)
    h.feed(audio("a", 0), b0, {"final": True, "context_id": "a"})
    h.feed({"interrupted": True, "context_id": "a"})
    assert h.events() == [AudioChunk(0, frame_of(b0), 0.0, "b"), Interrupted(0, "a")]
    assert h.s.dropped_frames == 2
    # the context stays open; its next cycle is delivered
    h.s.send_text("a", "again", h.now, flush=True)
    a1 = audio("a", 0)
    h.feed(a1)
    evs = h.events()
    chunks = [e for e in evs if isinstance(e, AudioChunk)]
    assert chunks == [AudioChunk(1, frame_of(a1), 0.0, "a")]


def test_cancel_all_contexts_without_context_id_ack() -> None:
    h = H()
    for c in ("a", "b", "c"):
        h.s.create_context(c, h.now)
    h.s.close_context("c", h.now)  # closing contexts do not accept input: not cancelled
    assert h.s.cancel(h.now) == ("a", "b")
    assert h.sent()[-1] == {"cancel": True}
    h.events()
    h.feed(audio("a", 0), audio("b", 0), {"interrupted": True})  # no context_id in the ack
    assert h.events() == [Interrupted(0, "a"), Interrupted(0, "b")]
    assert h.s.dropped_frames == 2


def test_cancel_ack_timeout_multi() -> None:
    h = H(cancel_timeout=2.0)
    h.s.create_context("a", 0.0)
    h.s.cancel(1.0, "a")
    assert h.s.next_deadline() == 3.0
    h.events()
    h.s.handle_timeout(3.0)
    evs = h.events()
    assert evs[0] == Interrupted(0, "a", acknowledged=False)
    assert [type(e).__name__ for e in evs[1:]] == ["Diagnostic"]
    # the cancel is abandoned: the context's next cycle flows; the late ack is absorbed
    h.s.send_text("a", "More.", 4.0, flush=True)
    h.events()
    h.feed(audio("a", 0))
    assert [(type(e).__name__, e.turn) for e in h.events()] == [("AudioChunk", 1)]
    h.feed({"interrupted": True, "context_id": "a"})
    assert h.events() == []
    assert h.s.next_deadline() is None


def test_context_timeout_then_context_closed() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.feed(created("a"))
    h.events()
    h.feed({"context_timeout": True, "context_id": "a"})
    assert h.s.context_state("a") is ClientContextState.TIMED_OUT
    with pytest.raises(LocalProtocolError):
        h.s.send_text("a", "x", h.now)
    h.feed(audio("a", 0))  # nothing more of it is delivered
    h.feed(ctx_closed("a"))
    assert h.events() == [ContextTimeout("a"), ContextClosed("a", USAGE_OBJ)]
    assert h.s.open_contexts == ()
    assert h.s.dropped_frames == 1


def test_context_created_twice_is_reported_once() -> None:
    h = H()
    h.s.create_context("a", h.now)
    h.feed(created("a"), created("a"))
    assert h.events() == [TurnStarted(0, "a"), ContextCreated("a")]


def test_session_level_frames() -> None:
    h = H()
    h.feed({"session_started": True, "session_id": "s1"})  # legacy greeting: tolerated
    h.feed({"warning": "careful", "context_id": "a"})
    h.feed({"is_final": True, "context_id": "a"})  # legacy
    h.s.update_settings(h.now, speed=1.1)
    h.feed({"settings_updated": True, "settings": {"speed": 1.1}})
    evs = h.events()
    assert evs == [Warning("careful", None, "a"), SettingsUpdated({"speed": 1.1})]
    assert h.s.unknown_frames == 2


def test_spell_diagnostic_per_context() -> None:
    h = H(normalize=True)
    h.s.create_context("a", h.now)
    h.s.create_context("b", h.now, voice_id=1)
    h.events()
    h.s.send_text("a", "<sp", h.now)
    h.s.send_text("a", "ell>X</spell>", h.now)
    h.s.send_text("b", "plain", h.now)
    evs = h.events()
    assert len(evs) == 1
    assert isinstance(evs[0], Diagnostic)
    assert evs[0].context_id == "a"


# =============================================================================================
# keep-alive


def test_keepalive_interval_sends_empty_text() -> None:
    h = H(keepalive_interval=10.0)
    assert h.s.next_deadline() is None
    h.s.create_context("a", 0.0)
    h.s.create_context("b", 4.0)
    h.sent()
    assert h.s.next_deadline() == 10.0
    h.s.handle_timeout(9.9)
    assert h.sent() == []
    h.s.handle_timeout(10.0)
    assert h.sent() == [{"text": "", "context_id": "a"}]
    assert h.s.next_deadline() == 14.0
    h.s.send_text("b", "hi", 12.0)  # any send resets the context's timer
    h.sent()
    h.s.handle_timeout(14.0)
    assert h.sent() == []
    h.s.close_context("b", 15.0)  # closing contexts are not kept alive
    h.sent()
    h.s.handle_timeout(20.0)
    assert h.sent() == [{"text": "", "context_id": "a"}]
    assert h.s.next_deadline() == 30.0


def test_keepalive_manual_and_off_by_default() -> None:
    h = H()
    h.s.create_context("a", 0.0)
    h.sent()
    assert h.s.next_deadline() is None
    h.s.handle_timeout(1000.0)
    assert h.sent() == []
    h.s.keep_alive("a", 1.0)
    assert h.sent() == [{"text": "", "context_id": "a"}]
    with pytest.raises(LocalProtocolError):
        MultiClientSession(keepalive_interval=0)


# =============================================================================================
# connection loss / replay


def test_restart_reports_context_replays() -> None:
    h = H()
    h.s.create_context("a", h.now, voice_id=1)
    h.s.create_context("b", h.now, voice_id=2)
    h.s.send_text("a", "Never spoken.", h.now, flush=True)
    h.s.send_text("b", "First part. ", h.now)
    h.s.send_text("b", "Second part.", h.now, flush=True)
    h.feed(
        created("a"),
        created("b"),
        {"generation_started": True, "context_id": "b", "chunk_id": 0, "text": "First part."},
        audio("b", 0),
        {"chunk_complete": True, "context_id": "b", "chunk_id": 0},
    )
    h.events()
    h.s.connection_lost(1012, "restart", h.now)
    evs = h.events()
    ra = TurnReplay(0, "Never spoken.", True, True, "Never spoken.", "a")
    rb = TurnReplay(0, "First part. Second part.", True, False, "Second part.", "b")
    assert evs == [
        TurnAborted(0, 1012, False, "Never spoken.", "a"),
        TurnAborted(0, 1012, True, "Second part.", "b"),
        ConnectionTerminated(1012, "restart", True, (ra, rb)),
    ]
    fresh = H()
    fresh.s.replay(ra, 0.0, voice_id=1)
    assert fresh.sent() == [
        {"text": " ", "context_id": "a", "voice_settings": {"voice_id": 1}},
        {"text": "Never spoken.", "context_id": "a", "flush": True},
    ]
    with pytest.raises(LocalProtocolError):
        fresh.s.replay(TurnReplay(0, "x", True, True, "x"), 0.0)


def test_text_after_flush_before_final_survives_in_replay() -> None:
    h = H()
    h.s.create_context("a", h.now, voice_id=1, text="")
    h.s.send_text("a", "One.", h.now, flush=True)
    h.s.send_text("a", " Two.", h.now)  # admitted after the flush: not covered by its final
    h.feed(created("a"), audio("a", 0), {"final": True, "context_id": "a"})
    h.events()
    h.s.connection_lost(1012, "", h.now)
    term = next(e for e in h.events() if isinstance(e, ConnectionTerminated))
    assert len(term.replay) == 1
    assert "Two." in term.replay[0].unspoken_text


def test_every_flush_cycle_has_a_turn_started() -> None:
    h = H()
    h.s.create_context("a", h.now, voice_id=1)
    h.s.send_text("a", "One.", h.now, flush=True)
    h.feed(created("a"), audio("a", 0), {"final": True, "context_id": "a"})
    h.s.send_text("a", "Two.", h.now, flush=True)
    h.feed(audio("a", 0))
    evs = h.events()
    first_audio_1 = next(i for i, e in enumerate(evs) if isinstance(e, AudioChunk) and e.turn == 1)
    assert TurnStarted(1, "a") in evs[:first_audio_1]


# =============================================================================================
# property: random interleavings never leak frames across contexts

CTXS = ["a", "b", "c"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["audio", "close_imm", "cancel", "interrupted", "closed", "final"]),
            st.sampled_from(CTXS),
        ),
        max_size=40,
    )
)
def test_random_frames_never_cross_contexts(script: list[tuple[str, str]]) -> None:
    h = H()
    for c in CTXS:
        h.s.create_context(c, 0.0)
        h.feed(created(c))
    h.events()
    idx = dict.fromkeys(CTXS, 0)
    dead: set[str] = set()  # cancelled (until ack) or closing immediately / closed
    acked_cancels: list[str] = []
    for kind, c in script:
        if kind == "audio":
            idx[c] += 1
            before = h.s.dropped_frames
            h.feed(audio(c, idx[c]))
            evs = h.events()
            if c in dead or h.s.context_state(c) is ClientContextState.CLOSED:
                assert evs == []
                assert h.s.dropped_frames == before + 1
            else:
                assert len(evs) == 1
                assert evs[0].context_id == c
        elif kind == "close_imm" and h.s.context_state(c) in (
            ClientContextState.OPEN,
            ClientContextState.CLOSING,
        ):
            h.s.close_context(c, 0.0, immediate=True)
            dead.add(c)
        elif kind == "cancel" and h.s.context_state(c) is ClientContextState.OPEN:
            if c not in acked_cancels:
                h.s.cancel(0.0, c)
                acked_cancels.append(c)
                dead.add(c)
        elif kind == "interrupted" and acked_cancels:
            target = acked_cancels.pop(0)
            h.feed({"interrupted": True, "context_id": target})
            evs = h.events()
            assert [type(e) for e in evs] == [Interrupted]
            assert evs[0].context_id == target
            if h.s.context_state(target) is ClientContextState.OPEN:
                dead.discard(target)
        elif kind == "closed" and h.s.context_state(c) is not ClientContextState.CLOSED:
            h.feed(ctx_closed(c))
            evs = h.events()
            assert evs == [ContextClosed(c, USAGE_OBJ)]
            dead.add(c)
        elif kind == "final":
            h.feed({"final": True, "context_id": c})
            for e in h.events():
                assert e.context_id == c
