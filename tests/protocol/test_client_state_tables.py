"""The client's state tables drive its sessions (h2 ``tests/test_state_machines.py`` style).

For every table and every ``(state, input)`` pair, a piece of work (turn, context, request) is
put in that state and the input applied through the session's one stepping function: a pair in
the table moves to its next state and runs its action (checked by the event the action emits);
a pair not in it leaves the state alone and is a LocalProtocolError (local input) or a dropped
frame (remote input). A hypothesis walk then applies random input sequences and checks the
state always follows the table. The tables themselves are checked for shape: every state is
reachable, terminal states have no way out, every action has an implementation.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.protocol import _client, _state
from kugelwire.protocol._client import (
    MultiClientSession,
    StreamClientSession,
    TTSClientSession,
    _Context,
    _Cycle,
    _Request,
    _Turn,
)
from kugelwire.protocol._errors import LocalProtocolError
from kugelwire.protocol._events import (
    AudioChunk,
    ContextClosed,
    ContextCreated,
    ContextTimeout,
    ErrorCode,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    Warning,
)
from kugelwire.protocol._messages import parse_server_message
from kugelwire.protocol._state import (
    CLIENT_CONTEXT_TABLE,
    CLIENT_CONTEXT_TRANSITIONS,
    CLIENT_REQUEST_TABLE,
    CLIENT_REQUEST_TRANSITIONS,
    CLIENT_TURN_TABLE,
    CLIENT_TURN_TRANSITIONS,
    LOCAL_CONTEXT_INPUTS,
    LOCAL_TURN_INPUTS,
    ClientAction,
    ClientContextState,
    ClientRequestState,
    ClientTurnState,
    ContextInput,
    RequestInput,
    TurnInput,
)
from tests.model._profiles import examples

_A = ClientAction
AUDIO = {
    "audio": base64.b64encode(b"\x00\x00" * 240).decode(),
    "enc": "pcm_s16le", "idx": 0, "sr": 24000, "samples": 240, "chunk_id": 0,
}
USAGE = {"audio_seconds": 0.01, "characters": 1, "cost_cents": 0.0, "currency": "eur",
         "model_id": "kugel-3"}


def frame(obj: dict[str, Any]) -> Any:
    import json

    return parse_server_message(json.dumps(obj))


def server_error() -> ServerError:
    return ServerError(ErrorCode.NOT_FOUND, "Voice not found", 404, "NOT_FOUND", None, 0)


# -- what each action must be seen doing (on the events, or on the work) ------------------------
def emitted(kind: type[Any], check: Callable[[Any], bool] = lambda e: True) -> Any:
    def seen(session: Any, work: Any, events: list[Any]) -> bool:
        return len(events) == 1 and type(events[0]) is kind and check(events[0])

    return seen


def nothing(session: Any, work: Any, events: list[Any]) -> bool:
    return events == []


def flushed(session: Any, work: Any, events: list[Any]) -> bool:
    return events == [] and work.flushed and work.cycle.flushed_at == 7.0


def close_flushed(session: Any, work: Any, events: list[Any]) -> bool:
    return bool(work.flush_marks) and work.cycle.flushed_at == 7.0


EFFECTS: dict[ClientAction | None, Any] = {
    None: nothing,
    _A.MARK_FLUSHED: flushed,
    _A.DELIVER: emitted(AudioChunk),
    _A.WARN: emitted(Warning),
    _A.FINAL: lambda s, w, ev: len(ev) == 1 and type(ev[0]) in (TurnFinal, RequestFinal),
    _A.CLOSE: emitted(TurnClosed),
    _A.REFUSE: emitted(ServerError, lambda e: e.ends_turn and e.ends_work),
    _A.INTERRUPT: emitted(Interrupted, lambda e: e.acknowledged),
    _A.ABANDON: emitted(Interrupted, lambda e: not e.acknowledged),
    _A.ABORT: emitted(TurnAborted),
    _A.FAIL: emitted(ServerError, lambda e: e.ends_work),
    _A.RETARGET: emitted(Interrupted, lambda e: e.acknowledged),
    _A.CREATED: emitted(ContextCreated),
    _A.TIMED_OUT: emitted(ContextTimeout),
    _A.CLOSE_FLUSH: close_flushed,
    _A.CONTEXT_CLOSED: emitted(ContextClosed, lambda e: not e.metrics.cancelled),
    _A.CLOSED_IMMEDIATE: emitted(ContextClosed, lambda e: e.metrics.cancelled),
    _A.DISCARD: nothing,
}


# -- one harness per machine: a session with one piece of work in a chosen state -------------
class Machine:
    def __init__(
        self,
        table: Mapping[tuple[Any, Any], tuple[ClientAction | None, Any]],
        transitions: Mapping[tuple[Any, Any], Any],
        states: type[Enum],
        inputs: type[Enum],
        local: frozenset[Any],
        actions: Mapping[ClientAction, Any],
        terminal: frozenset[Any],
    ) -> None:
        self.terminal = terminal
        self.table, self.transitions = table, transitions
        self.states, self.inputs, self.local, self.actions = states, inputs, local, actions

    def make(self, state: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def arg(self, event: Any) -> Any:
        return None

    def requeue(self, session: Any, work: Any) -> None:
        """Put ``work`` back at the head of its queue (an action that ends it takes it off)."""


class TurnMachine(Machine):
    ARGS: ClassVar[dict[TurnInput, Callable[[], Any]]] = {
        TurnInput.OUTPUT: lambda: frame(AUDIO),
        TurnInput.IDLE_WARNING: lambda: frame({"warning": "idle"}),
        TurnInput.FINAL: lambda: frame({"final": True}),
        TurnInput.SESSION_CLOSED: lambda: frame({"session_closed": True, "usage": USAGE}),
        TurnInput.REFUSED: server_error,
        TurnInput.CONNECTION_LOST: lambda: (1012, []),
    }

    def make(self, state: Any) -> tuple[Any, Any]:
        session = StreamClientSession(voice_id=1)
        turn = _Turn(_Cycle(0, parts=["Hello."], first_text_at=0.0), state)
        session._turns.append(turn)
        return session, turn

    def requeue(self, session: Any, work: Any) -> None:
        if work not in session._turns:
            session._turns.appendleft(work)

    def arg(self, event: Any) -> Any:
        make = self.ARGS.get(event)
        return None if make is None else make()


class ContextMachine(Machine):
    ARGS: ClassVar[dict[ContextInput, Callable[[], Any]]] = {
        ContextInput.OUTPUT: lambda: frame({**AUDIO, "context_id": "a"}),
        ContextInput.CREATED: lambda: frame({"context_created": True, "context_id": "a"}),
        ContextInput.TIMEOUT: lambda: frame({"context_timeout": True, "context_id": "a"}),
        ContextInput.CLOSED: lambda: frame({"context_closed": True, "context_id": "a"}),
        ContextInput.CONNECTION_LOST: lambda: (1012, []),
    }

    def make(self, state: Any) -> tuple[Any, Any]:
        session = MultiClientSession(voice_id=1)
        ctx = _Context("a", _Cycle(0, parts=["Hello."], first_text_at=0.0), state)
        session._contexts["a"] = ctx
        return session, ctx

    def arg(self, event: Any) -> Any:
        make = self.ARGS.get(event)
        return None if make is None else make()


class RequestMachine(Machine):
    ARGS: ClassVar[dict[RequestInput, Callable[[], Any]]] = {
        RequestInput.OUTPUT: lambda: frame(AUDIO),
        RequestInput.WARNING: lambda: frame({"warning": "slow"}),
        RequestInput.FINAL: lambda: frame({"final": True, "usage": USAGE}),
        RequestInput.ERROR: lambda: frame({"error": "Voice not found", "code": 404,
                                           "error_code": "NOT_FOUND"}),
        RequestInput.CONNECTION_LOST: lambda: (1012, []),
    }

    def make(self, state: Any) -> tuple[Any, Any]:
        session = TTSClientSession(voice_id=1)
        req = _Request(_Cycle(0, parts=["Hello."], first_text_at=0.0), state)
        session._requests.append(req)
        return session, req

    def requeue(self, session: Any, work: Any) -> None:
        if work not in session._requests:
            session._requests.appendleft(work)

    def arg(self, event: Any) -> Any:
        make = self.ARGS.get(event)
        return None if make is None else make()


MACHINES = {
    "turn": TurnMachine(CLIENT_TURN_TABLE, CLIENT_TURN_TRANSITIONS, ClientTurnState, TurnInput,
                        LOCAL_TURN_INPUTS, _client._TURN_ACTIONS, _state.TERMINAL_TURN_STATES),
    "context": ContextMachine(CLIENT_CONTEXT_TABLE, CLIENT_CONTEXT_TRANSITIONS,
                              ClientContextState, ContextInput, LOCAL_CONTEXT_INPUTS,
                              _client._CONTEXT_ACTIONS,
                              frozenset({ClientContextState.CLOSED})),
    "request": RequestMachine(CLIENT_REQUEST_TABLE, CLIENT_REQUEST_TRANSITIONS,
                              ClientRequestState, RequestInput,
                              frozenset({RequestInput.CANCEL}), _client._REQUEST_ACTIONS,
                              frozenset({ClientRequestState.DONE, ClientRequestState.FAILED,
                                         ClientRequestState.CANCELLED,
                                         ClientRequestState.ABORTED})),
}
PAIRS = [
    (name, state, event)
    for name, m in MACHINES.items()
    for state in m.states
    for event in m.inputs
]


@pytest.mark.parametrize(("name", "state", "event"), PAIRS,
                         ids=[f"{n}-{s.name}-{e.name}" for n, s, e in PAIRS])
def test_every_pair_follows_the_table(name: str, state: Any, event: Any) -> None:
    m = MACHINES[name]
    session, work = m.make(state)
    entry = m.table.get((state, event))
    dropped = session.dropped_frames
    if entry is None:
        if event in m.local:
            with pytest.raises(LocalProtocolError):
                session._step(work, event, m.arg(event), 7.0)
        else:
            assert session._step(work, event, m.arg(event), 7.0) is False
            assert session.dropped_frames == dropped + 1
        assert work.state is state
        assert list(session.events()) == []
        return
    action, new = entry
    assert session._step(work, event, m.arg(event), 7.0) is True
    assert work.state is new
    assert session.dropped_frames == dropped
    events = list(session.events())
    assert EFFECTS[action](session, work, events), (action, events)


@pytest.mark.parametrize("name", list(MACHINES))
def test_table_shape(name: str) -> None:
    m = MACHINES[name]
    # the transitions the docs draw are the table without its actions
    assert dict(m.transitions) == {pair: new for pair, (_, new) in m.table.items()}
    # every action the table names is implemented (and nothing else is)
    used = {action for action, _ in m.table.values() if action is not None}
    assert used == set(m.actions)
    # every state is reachable from the first (initial) one
    states = list(m.states)
    seen, todo = {states[0]}, [states[0]]
    while todo:
        state = todo.pop()
        for (src, _), (_, new) in m.table.items():
            if src is state and new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(states)
    # the states with no way out are exactly the terminal ones
    assert set(states) - {src for src, _ in m.table} == m.terminal


@pytest.mark.parametrize("name", list(MACHINES))
@given(data=st.data())
def test_random_walks_follow_the_table(name: str, data: st.DataObject) -> None:
    m = MACHINES[name]
    states = list(m.states)
    session, work = m.make(states[0])
    expected = states[0]
    for event in data.draw(st.lists(st.sampled_from(list(m.inputs)), max_size=12)):
        if name == "context" and expected is ClientContextState.CLOSED:
            break  # a closed context is tombstoned: it takes no more input
        m.requeue(session, work)
        entry = m.table.get((expected, event))
        try:
            moved = session._step(work, event, m.arg(event), 7.0)
        except LocalProtocolError:
            assert entry is None and event in m.local
            moved = False
        assert moved is (entry is not None)
        if entry is not None:
            expected = entry[1]
        assert work.state is expected


# -- the audio hot paths are the table's path, taken early --------------------------------------
_CIDS = st.sampled_from(["a", "b"])


def _audio_obj(idx: int, chunk: int, cid: str | None) -> dict[str, Any]:
    obj = {**AUDIO, "idx": idx, "chunk_id": chunk}
    if cid is not None:
        obj["context_id"] = cid
    return obj


def _frames(cid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    def with_ctx(obj: dict[str, Any], c: str | None) -> dict[str, Any]:
        return obj if c is None else {**obj, "context_id": c}

    return st.one_of(
        st.builds(_audio_obj, st.integers(0, 4), st.integers(0, 1), cid),
        st.builds(with_ctx, st.sampled_from([
            {"generation_started": True, "chunk_id": 0, "text": "Hello."},
            {"chunk_complete": True, "chunk_id": 0, "audio_seconds": 0.01, "gen_ms": 1.0},
            {"final": True},
            {"interrupted": True},
            {"warning": "slow"},
            {"context_created": True},
            {"context_closed": True},
            {"context_timeout": True},
        ]), cid),
        st.just({"session_closed": True, "usage": USAGE}),
        st.just({"final": True, "usage": USAGE}),
    )


_OPS = {
    "stream": st.lists(st.one_of(
        st.tuples(st.just("send"), st.booleans()), st.tuples(st.just("cancel")),
        st.tuples(st.just("timeout")), st.tuples(st.just("frame"), _frames(st.none())),
    ), max_size=30),
    "multi": st.lists(st.one_of(
        st.tuples(st.just("create"), _CIDS), st.tuples(st.just("send"), _CIDS, st.booleans()),
        st.tuples(st.just("cancel"), st.one_of(st.none(), _CIDS)),
        st.tuples(st.just("close"), _CIDS, st.booleans()), st.tuples(st.just("timeout")),
        st.tuples(st.just("frame"), _frames(st.one_of(st.none(), _CIDS))),
    ), max_size=30),
    "tts": st.lists(st.one_of(
        st.tuples(st.just("request")), st.tuples(st.just("cancel")),
        st.tuples(st.just("timeout")), st.tuples(st.just("frame"), _frames(st.none())),
    ), max_size=30),
}


def _run(kind: str, ops: list[tuple[Any, ...]]) -> list[Any]:
    import json

    session: Any = {"stream": StreamClientSession, "multi": MultiClientSession,
                    "tts": TTSClientSession}[kind](voice_id=1, cancel_timeout=1.0)
    seen: list[Any] = []
    now = 0.0
    for op in ops:
        now += 0.25
        try:
            if op[0] == "frame":
                session.receive_message(json.dumps(op[1]), now)
            elif op[0] == "timeout":
                session.handle_timeout(now + 2.0)
            elif kind == "stream":
                (session.send_text("Hello. ", now, flush=op[1]) if op[0] == "send"
                 else session.cancel(now))
            elif kind == "tts":
                session.request("Hello.", now) if op[0] == "request" else session.cancel(now)
            elif op[0] == "create":
                session.create_context(op[1], now)
            elif op[0] == "send":
                session.send_text(op[1], "Hello. ", now, flush=op[2])
            elif op[0] == "cancel":
                session.cancel(now, op[1])
            else:
                session.close_context(op[1], now, immediate=op[2])
        except Exception as exc:  # the same errors on both paths
            seen.append(type(exc).__name__)
        seen.extend((e, getattr(e, "metrics", None)) for e in session.events())
    seen.append((session.dropped_frames, session.unknown_frames, session.messages_to_send()))
    return seen


@pytest.mark.parametrize("kind", list(_OPS))
@settings(max_examples=examples(300))
@given(data=st.data())
def test_the_audio_hot_paths_give_what_the_table_gives(kind: str, data: st.DataObject) -> None:
    from unittest import mock

    start: dict[str, list[tuple[Any, ...]]] = {  # work under way, so that audio has a taker
        "stream": [("send", False)],
        "multi": [("create", "a"), ("create", "b"), ("frame", {"context_created": True,
                                                               "context_id": "a"})],
        "tts": [("request",), ("request",)],
    }
    ops = start[kind] + data.draw(_OPS[kind])
    fast = _run(kind, ops)
    empty: frozenset[Any] = frozenset()
    with mock.patch.object(_client, "_SPEAKING", empty), \
         mock.patch.object(_client, "_CONTEXT_SPEAKING", empty), \
         mock.patch.object(_client, "_REQUEST_SPEAKING", empty):
        plain = _run(kind, ops)
    assert fast == plain


_SCRIPTS = {  # the cases that matter most, besides the random ones: audio around a cancel
    "stream": [("send", False), ("cancel",), ("send", False), ("frame", _audio_obj(0, 0, None)),
               ("frame", {"interrupted": True}), ("frame", _audio_obj(1, 0, None)),
               ("send", True), ("frame", _audio_obj(2, 0, None)), ("frame", {"final": True})],
    "multi": [("create", "a"), ("create", "b"), ("frame", {"context_created": True,
                                                          "context_id": "a"}),
              ("frame", _audio_obj(0, 0, "a")), ("cancel", "a"), ("frame", _audio_obj(1, 0, "a")),
              ("frame", _audio_obj(0, 0, "b")), ("frame", {"interrupted": True,
                                                          "context_id": "a"}),
              ("send", "a", True), ("frame", _audio_obj(2, 0, "a")),
              ("close", "b", True), ("frame", _audio_obj(1, 0, "b"))],
    "tts": [("request",), ("request",), ("frame", _audio_obj(0, 0, None)), ("cancel",),
            ("frame", _audio_obj(1, 0, None)), ("frame", {"final": True, "usage": USAGE}),
            ("frame", _audio_obj(0, 0, None)), ("frame", {"interrupted": True}),
            ("frame", _audio_obj(0, 0, None))],
}


@pytest.mark.parametrize("kind", list(_SCRIPTS))
def test_the_audio_hot_paths_around_a_cancel(kind: str) -> None:
    from unittest import mock

    fast = _run(kind, _SCRIPTS[kind])
    empty: frozenset[Any] = frozenset()
    with mock.patch.object(_client, "_SPEAKING", empty), \
         mock.patch.object(_client, "_CONTEXT_SPEAKING", empty), \
         mock.patch.object(_client, "_REQUEST_SPEAKING", empty):
        plain = _run(kind, _SCRIPTS[kind])
    assert fast == plain
    assert any(isinstance(e, tuple) and type(e[0]) is AudioChunk for e in fast)
