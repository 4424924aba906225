"""Stateful model test of ``/ws/tts/multi``: up to 20 contexts over one in-memory socket.

Rules: create a context, send tokens to one, flush one, cancel one or all, close one gracefully
or immediately (including right after creating it), close_socket, advance the fake clock (past
the 20 s context inactivity timeout too), deliver k messages either way, step the engine k
pieces. Context ids are never reused within one example.

Invariants (the ``close_context`` / ``context_closed`` crossing of docs/index.md "Known races"
is exercised by immediate closes racing the server's own close):

* at most 20 contexts, on either side, at every step;
* every context ends with exactly one terminal event (``ContextClosed``, or ``TurnAborted``
  when the connection ends first); ``ContextTimeout`` at most once, before it;
* every flush-cycle ends at most once (``TurnFinal`` or ``Interrupted``); a ``TurnFinal`` only
  for a cycle that was started;
* no output of a cancelled cycle after the ``cancel()`` call, none of an immediately closed
  context after the ``close_context(immediate=True)`` call;
* audio ``idx`` strictly increases per cycle, ``chunk_id`` never decreases per context, and the
  ``generation_started`` chunk ids of a context are 0, 1, 2, ...;
* ``context_closed`` usage equals the audio the server sent for the context, and the audio
  delivered to the application when nothing of it was cancelled;
* text conservation (``_checks.py``) for every chunk, and per flush segment of every context
  that was neither cancelled nor closed immediately nor timed out;
* no error frame is ever sent (the client enforces the cap and the state rules locally).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kugelwire.protocol._errors import LocalProtocolError
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ContextClosed,
    ContextTimeout,
    GenerationStarted,
    Interrupted,
    TurnAborted,
    TurnFinal,
    TurnStarted,
    WordTimestamps,
)
from kugelwire.protocol._state import ClientContextState
from kugelwire.testing import PairEngine, SessionPair
from kugelwire.testing_strategies import llm_tokens, network_splits, timer_steps
from tests.model._checks import check_chunk, check_turn_text
from tests.model._profiles import ACK_ALWAYS_COMES, machine_settings

_OUTPUT = (AudioChunk, GenerationStarted, ChunkComplete, WordTimestamps, TurnFinal)
_SENDABLE = (ClientContextState.CREATING, ClientContextState.OPEN)
_CAP = 20


class MultiModel(RuleBasedStateMachine):
    """Random interleavings of everything a ``/ws/tts/multi`` session can see."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = SessionPair.multi(
            engine=PairEngine(auto=False, pieces=2, ms_per_char=2.0),
            language="en",
            client_kwargs={"cancel_timeout": ACK_ALWAYS_COMES},
        )
        self.n_created = 0
        self.created: list[str] = []
        self.segments: dict[str, list[list[str]]] = {}  # text per flush segment
        self.cancelled: dict[tuple[str, int], int] = {}  # (cid, cycle) -> events at cancel()
        self.killed: dict[str, int] = {}  # immediately closed: cid -> events at the call
        self.dirty: set[str] = set()  # text dropped on purpose: no conservation check
        self.closing = False
        self.checked_events = 0
        self.last_idx: dict[tuple[str, int], int] = {}
        self.last_chunk: dict[str, int] = {}
        self.checked_requests = 0

    # -- helpers ------------------------------------------------------------------------------
    def usable(self) -> bool:
        return not self.closing and not self.pair.client.terminated

    def sendable(self) -> list[str]:
        c = self.pair.client
        return [cid for cid in c.open_contexts if c.context_state(cid) in _SENDABLE]

    def pick(self, data: st.DataObject, ids: list[str]) -> str:
        return ids[data.draw(st.integers(0, len(ids) - 1))]

    # -- rules --------------------------------------------------------------------------------
    @initialize()
    def first_context(self) -> None:
        self.create_context(immediate_close=False)

    @precondition(lambda self: self.usable())
    @rule(immediate_close=st.booleans())
    def create_context(self, immediate_close: bool) -> None:
        cid = f"c{self.n_created}"
        client = self.pair.client
        if len(client.open_contexts) >= _CAP:
            try:
                client.create_context(cid, self.pair.now, voice_id=1)
            except LocalProtocolError:
                return
            raise AssertionError("a 21st context must be refused locally")
        self.n_created += 1
        client.create_context(cid, self.pair.now, voice_id=1)
        self.created.append(cid)
        self.segments[cid] = [[" "]]  # create_context sends text " "
        if immediate_close:
            self.close_context(cid, immediate=True)

    @precondition(lambda self: self.usable() and self.sendable())
    @rule(data=st.data(), tokens=st.lists(llm_tokens(), min_size=1, max_size=6))
    def send_tokens(self, data: st.DataObject, tokens: list[str]) -> None:
        cid = self.pick(data, self.sendable())
        for token in tokens:
            self.pair.client.send_text(cid, token, self.pair.now)
            self.segments[cid][-1].append(token)

    @precondition(lambda self: self.usable() and self.sendable())
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        cid = self.pick(data, self.sendable())
        self.pair.client.flush(cid, self.pair.now)
        self.segments[cid].append([])

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), everything=st.booleans())
    def cancel(self, data: st.DataObject, everything: bool) -> None:
        client = self.pair.client
        mark = len(self.pair.client_events())
        ids = self.sendable()
        if everything or not ids:
            targets = ids
            cancelled = client.cancel(self.pair.now)
        else:
            targets = [self.pick(data, ids)]
            cancelled = client.cancel(self.pair.now, targets[0])
        assert sorted(cancelled) == sorted(targets)
        for cid in targets:
            # the cycle that was current when cancel() was called (the client moved past it)
            self.cancelled[(cid, client._contexts[cid].number - 1)] = mark
            self.dirty.add(cid)

    @precondition(lambda self: self.usable() and self.pair.client.open_contexts)
    @rule(data=st.data(), immediate=st.booleans())
    def close_one(self, data: st.DataObject, immediate: bool) -> None:
        client = self.pair.client
        cid = self.pick(data, list(client.open_contexts))
        state = client.context_state(cid)
        allowed = state in _SENDABLE or (immediate and state is ClientContextState.CLOSING)
        if not allowed:
            try:
                client.close_context(cid, self.pair.now, immediate=immediate)
            except LocalProtocolError:
                return
            raise AssertionError(f"close_context in state {state} must be refused")
        self.close_context(cid, immediate=immediate)

    def close_context(self, cid: str, *, immediate: bool) -> None:
        mark = len(self.pair.client_events())
        self.pair.client.close_context(cid, self.pair.now, immediate=immediate)
        if immediate:
            self.killed[cid] = mark
            self.dirty.add(cid)
        else:
            self.segments[cid].append([])

    @precondition(lambda self: self.usable())
    @rule()
    def close_socket(self) -> None:
        self.pair.client.close_socket(self.pair.now)
        self.closing = True

    @rule(seconds=timer_steps())
    def advance(self, seconds: float) -> None:
        self.pair.advance(seconds, pump=False)

    @rule(k=network_splits())
    def deliver_to_server(self, k: int) -> None:
        self.pair.deliver_to_server(k)

    @rule(k=network_splits())
    def deliver_to_client(self, k: int) -> None:
        self.pair.deliver_to_client(k)

    @rule(k=network_splits())
    def step_engine(self, k: int) -> None:
        for _ in range(k):
            self.pair.step_engine()

    # -- invariants checked after every step ----------------------------------------------------
    @invariant()
    def at_most_20_contexts(self) -> None:
        assert len(self.pair.client.open_contexts) <= _CAP
        assert len(self.pair.server.contexts) <= _CAP  # type: ignore[attr-defined]

    @invariant()
    def output_is_ordered(self) -> None:
        events = self.pair.client_events()
        for e in events[self.checked_events :]:
            if isinstance(e, AudioChunk):
                assert e.context_id is not None and e.frame.chunk_id is not None
                key = (e.context_id, e.turn)
                assert e.frame.idx > self.last_idx.get(key, -1), e
                self.last_idx[key] = e.frame.idx
                assert e.frame.chunk_id >= self.last_chunk.get(e.context_id, 0)
                self.last_chunk[e.context_id] = e.frame.chunk_id
            elif isinstance(e, GenerationStarted):
                assert e.context_id is not None
                assert e.chunk_id > self.last_chunk.get(e.context_id, -1), e
                self.last_chunk[e.context_id] = e.chunk_id
        self.checked_events = len(events)

    @invariant()
    def engine_chunks_are_their_sources(self) -> None:
        requested = self.pair.engine.requested
        for req in requested[self.checked_requests :]:
            check_chunk(req.chunk)
        self.checked_requests = len(requested)

    # -- the end ------------------------------------------------------------------------------
    def teardown(self) -> None:
        pair = self.pair
        if self.usable():
            for cid in list(pair.client.open_contexts):
                if pair.client.context_state(cid) in _SENDABLE:
                    self.close_context(cid, immediate=False)
        for _ in range(30):
            pair.pump(engine=True)
            pair.advance(1.0)
        self.at_most_20_contexts()
        self.output_is_ordered()
        self.engine_chunks_are_their_sources()
        self.check_final()

    def check_final(self) -> None:
        pair = self.pair
        events = pair.client_events()
        frames = [json.loads(m) for m in pair.received]
        # Server-side incarnations of each id. Race: text sent to a context whose inactivity
        # timeout fired on the server but whose context_timeout has not reached the client yet
        # creates a new context with that id on the server (text to an unknown id does); the
        # client has tombstoned the id and drops all of the new context's frames.
        incarnation: dict[str, int] = {}
        sent_samples: dict[tuple[str, int], int] = {}
        recreated: set[str] = set()
        for f in frames:
            cid = f.get("context_id")
            if cid is None:
                continue
            n = incarnation.get(cid, 0)
            if n and "context_created" in f:
                recreated.add(cid)
            if "audio" in f:
                sent_samples[(cid, n)] = sent_samples.get((cid, n), 0) + f["samples"]
            if "context_closed" in f:
                incarnation[cid] = n + 1
        errors = [f for f in frames if "error" in f]
        if recreated:
            event("text crossed context_timeout: context re-created on the server")
            assert pair.client.dropped_frames > 0
            self.dirty |= recreated
            # leaked re-created contexts count towards the server's cap; a re-created context
            # has no voice (only the create frame's voice_settings binds one), so its text is
            # refused with MISSING_VOICE_ID, as the hosted service does
            assert all(
                f.get("error_code") == "TOO_MANY_CONTEXTS"
                or (f.get("error_code") == "MISSING_VOICE_ID" and f.get("context_id") in recreated)
                for f in errors
            ), errors
        else:
            assert not errors, errors

        # contexts: exactly one terminal each
        ends: dict[str, list[Any]] = {}
        timeouts: dict[str, int] = {}
        for i, e in enumerate(events):
            if isinstance(e, ContextClosed) or (isinstance(e, TurnAborted) and e.context_id):
                assert e.context_id is not None
                ends.setdefault(e.context_id, []).append(e)
            elif isinstance(e, ContextTimeout):
                assert e.context_id not in timeouts
                assert e.context_id not in ends
                timeouts[e.context_id] = i
        assert sorted(ends) == sorted(self.created), (self.created, ends)
        assert all(len(v) == 1 for v in ends.values()), ends
        if not pair.client.terminated:
            assert not pair.client.open_contexts

        # cycles: at most one end each; TurnFinal only for a started cycle
        started = {(e.context_id, e.turn) for e in events if isinstance(e, TurnStarted)}
        cycle_ends: dict[tuple[str | None, int | None], int] = {}
        for e in events:
            if isinstance(e, TurnFinal | Interrupted) and e.context_id is not None:
                key = (e.context_id, e.turn)
                cycle_ends[key] = cycle_ends.get(key, 0) + 1
                if isinstance(e, TurnFinal):
                    assert key in started, key
        assert all(v == 1 for v in cycle_ends.values()), cycle_ends
        for (cid, cycle), mark in self.cancelled.items():
            late = [
                e
                for e in events[mark:]
                if isinstance(e, _OUTPUT) and e.context_id == cid and e.turn == cycle
            ]
            assert not late, late
            # its end: Interrupted (acknowledged, timed out, or at connection loss)
            assert any(
                isinstance(e, Interrupted) and e.context_id == cid and e.turn == cycle
                for e in events[mark:]
            ), (cid, cycle)
        for cid, mark in self.killed.items():
            late = [e for e in events[mark:] if isinstance(e, _OUTPUT) and e.context_id == cid]
            assert not late, late

        # usage: what the server sent, and (nothing cancelled) what was delivered
        delivered: dict[str, int] = {}
        for e in events:
            if isinstance(e, AudioChunk) and e.context_id is not None:
                delivered[e.context_id] = delivered.get(e.context_id, 0) + e.frame.samples
        for cid, (end,) in ends.items():
            if not isinstance(end, ContextClosed):
                continue
            total = sent_samples.get((cid, 0), 0)
            if end.usage is None:
                assert total == 0
            else:
                assert abs(end.usage.audio_seconds - total / 24000) < 1e-6
            if cid not in self.dirty:
                assert delivered.get(cid, 0) == total

        # text: per chunk (invariant above), and per flush segment of untouched contexts
        chunks: dict[str, list[str]] = {}
        for req in pair.engine.requested:
            assert req.ref.context_id is not None
            chunks.setdefault(req.ref.context_id, []).append(req.chunk.source)
        checked = 0
        for cid in self.created:
            if cid in self.dirty or cid in timeouts or not isinstance(ends[cid][0], ContextClosed):
                continue
            gens = [e.chunk_id for e in events if isinstance(e, GenerationStarted)
                    and e.context_id == cid]
            assert gens == list(range(len(gens)))
            sources = list(chunks.get(cid, []))
            for seg in self.segments[cid]:
                text = "".join(seg)
                mine: list[str] = []
                while sources and (text + "</spell>").startswith("".join([*mine, sources[0]])):
                    mine.append(sources.pop(0))
                check_turn_text(text, mine)
            assert not sources, (self.segments[cid], chunks.get(cid))
            checked += 1
        created = len(self.created)
        event(f"contexts created: {min(created, 5)}{'+' if created > 5 else ''}")
        event(f"contexts text-checked: {min(checked, 3)}")
        event(f"engine chunks: {min(len(pair.engine.requested) // 3 * 3, 9)}+")
        if self.cancelled:
            event("cancelled")
        if timeouts:
            event("context timeout")
        if pair.server.late_frames:  # type: ignore[attr-defined]
            event("late frames (close crossing context_closed)")


MultiModel.TestCase.settings = machine_settings(1200)
TestMultiModel = MultiModel.TestCase
