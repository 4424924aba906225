"""The server's three state machines walked pair by pair (like h2's test_state_machines.py).

For every ``(state, input)`` of each server table: a session is brought into ``state`` through
its public API, the input is fed to the session's machine, and either the table's actions run
in order and the machine lands in the table's next state, or the pair is not in the table and
the session raises the right error (``LocalProtocolError`` for an internal input,
``RemoteProtocolError`` for a client frame) without changing state. Then the frame -> input
mapping, which is how client frames reach the machines.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from kugelwire.protocol import _server
from kugelwire.protocol._errors import LocalProtocolError, RemoteProtocolError
from kugelwire.protocol._messages import EMPTY_CONFIG, parse_client_message
from kugelwire.protocol._server import (
    MultiServerSession,
    StreamServerSession,
    SynthesisRequested,
    TTSServerSession,
)
from kugelwire.protocol._state import (
    SERVER_CONTEXT_LOCAL_INPUTS,
    SERVER_CONTEXT_TRANSITIONS,
    SERVER_REQUEST_TRANSITIONS,
    SERVER_TURN_LOCAL_INPUTS,
    SERVER_TURN_TRANSITIONS,
    ServerContextAction,
    ServerContextInput,
    ServerContextState,
    ServerRequestAction,
    ServerRequestInput,
    ServerRequestState,
    ServerTurnAction,
    ServerTurnInput,
    ServerTurnState,
)

T, TI = ServerTurnState, ServerTurnInput
C, CI = ServerContextState, ServerContextInput
R, RI = ServerRequestState, ServerRequestInput


def _frame(obj: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(obj))


def _record(
    monkeypatch: pytest.MonkeyPatch, actions: dict[Any, Callable[..., None]]
) -> list[Any]:
    """Replace each action handler by one that records its name first."""
    seen: list[Any] = []
    for name, handler in list(actions.items()):

        def spy(*args: Any, _name: Any = name, _handler: Any = handler) -> None:
            seen.append(_name)
            _handler(*args)

        monkeypatch.setitem(actions, name, spy)
    return seen


def _every_pair(states: Any, inputs: Any) -> Any:
    return pytest.mark.parametrize(("state", "event"), list(itertools.product(states, inputs)))


def _walk(
    monkeypatch: pytest.MonkeyPatch,
    handlers: dict[Any, Callable[..., None]],
    entry: Any,
    feed: Callable[[], None],
    state_of: Callable[[], Any],
    refused: Callable[[], Any],
) -> None:
    """Feed one input to a machine in a known state: with a table ``entry``, the entry's
    actions run first, in order, and the machine lands in its next state; without one, the
    ``refused()`` error is raised, no action runs and the state stays."""
    before = state_of()
    seen = _record(monkeypatch, handlers)
    if entry is None:
        with refused():
            feed()
        assert state_of() is before and seen == []
        return
    actions, new = entry
    feed()
    assert state_of() is new
    assert tuple(seen[: len(actions)]) == actions  # (then any nested transition's)


# -- /ws/tts/stream: the turn ---------------------------------------------------------------------
def _stream_in(state: ServerTurnState) -> StreamServerSession:
    s = StreamServerSession()
    if state is not T.IDLE:
        s.receive_message('{"text": "Hello there", "voice_id": 1}', 0.0)
    if state is T.DRAINING:
        s.receive_message('{"flush": true}', 0.0)  # its chunk is with the engine: not drained
    assert s.state is state
    s.messages_to_send()
    return s


_TURN_MSGS: dict[ServerTurnInput, Any] = {
    TI.TEXT: _frame({"text": "more words ", "voice_id": 1}),
    TI.CONFIG: _frame({"voice_id": 2}),
    TI.FLUSH: _frame({"flush": True}),
    TI.CANCEL: _frame({"cancel": True}),
    TI.CLOSE_SOCKET: _frame({"close_socket": True}),
}  # internal inputs come without a frame


@_every_pair(ServerTurnState, ServerTurnInput)
def test_every_turn_pair(
    state: ServerTurnState, event: ServerTurnInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _stream_in(state)
    entry = SERVER_TURN_TRANSITIONS.get((state, event))
    # every client frame is taken in every state: only internal inputs can be missing
    assert entry is not None or event in SERVER_TURN_LOCAL_INPUTS
    _walk(
        monkeypatch,
        _server._TURN_ACTIONS,
        entry,
        lambda: s._process(event, _TURN_MSGS.get(event), 1.0),
        lambda: s.state,
        lambda: pytest.raises(LocalProtocolError, match="does not take"),
    )


def test_a_refused_turn_start_leaves_the_turn_idle() -> None:
    s = StreamServerSession()
    s.receive_message('{"text": "no voice here"}', 0.0)  # MISSING_VOICE_ID
    assert s.state is T.IDLE and s.turns_started == 0
    assert json.loads(s.messages_to_send()[0])["error_code"] == "MISSING_VOICE_ID"


def test_a_restarting_server_declines_a_new_turn_and_stays_idle() -> None:
    s = StreamServerSession()
    s.receive_message('{"text": "Hello there", "voice_id": 1}', 0.0)
    s.receive_message('{"flush": true}', 0.0)
    s.shutdown(0.0)
    s.receive_message('{"text": "next turn", "voice_id": 1}', 0.0)  # waits for the next turn
    for event in list(s.events()):
        assert isinstance(event, SynthesisRequested)
        s.complete_chunk(event.ref, 1.0, 0.0)
    assert s.state is T.IDLE and s.turns_started == 1
    assert s.close_code == 1012


@pytest.mark.parametrize(
    ("frame", "inputs"),
    [
        ({"text": "a"}, (TI.TEXT,)),
        ({"text": "a", "flush": True}, (TI.TEXT, TI.FLUSH)),
        ({"text": "a", "close": True, "voice_id": 2}, (TI.TEXT, TI.FLUSH)),
        ({"text": "", "flush": True}, (TI.FLUSH,)),
        ({"end_session": True}, (TI.FLUSH,)),
        ({"voice_id": 2}, (TI.CONFIG,)),
        ({"voice_id": 2, "flush": True}, (TI.CONFIG, TI.FLUSH)),
        ({"text": ""}, ()),
        ({}, ()),
        ({"close_socket": True, "flush": True, "voice_id": 2}, (TI.CLOSE_SOCKET,)),
        ({"close_socket": True, "text": "a"}, (TI.TEXT, TI.CLOSE_SOCKET)),
    ],
)
def test_stream_frames_as_turn_inputs(frame: dict[str, Any], inputs: tuple[Any, ...]) -> None:
    assert _server._turn_inputs(_frame(frame)) == inputs


def test_every_turn_action_has_a_handler() -> None:
    assert set(_server._TURN_ACTIONS) == set(ServerTurnAction)
    used = {a for acts, _ in SERVER_TURN_TRANSITIONS.values() for a in acts}
    assert used == set(ServerTurnAction)


# -- /ws/tts/multi: a context -------------------------------------------------------------------
_VOICE = {"voice_settings": {"voice_id": 1}}


def _multi_in(state: ServerContextState) -> MultiServerSession:
    s = MultiServerSession()
    if state is not C.IDLE:
        s.receive_message(json.dumps({"context_id": "a", "text": "Hello there", **_VOICE}), 0.0)
    if state is C.CLOSING:  # its chunk is with the engine: the close's final is owed
        s.receive_message('{"context_id": "a", "close_context": true}', 0.0)
    if state is C.CLOSED:
        s.receive_message('{"context_id": "a", "close_context": true, "immediate": true}', 0.0)
    assert s.context_state("a") is state
    s.messages_to_send()
    return s


_CONTEXT_MSGS: dict[ServerContextInput, Any] = {
    CI.TEXT: _frame({"context_id": "a", "text": "more words ", **_VOICE}),
    CI.FLUSH: _frame({"context_id": "a", "flush": True}),
    CI.KEEP_ALIVE: _frame({"context_id": "a", "keep_alive": True}),
    CI.INIT: _frame({"context_id": "a", **_VOICE}),
    CI.CANCEL: _frame({"context_id": "a", "cancel": True}),
    CI.CLOSE: _frame({"context_id": "a", "close_context": True}),
    CI.CLOSE_IMMEDIATE: _frame({"context_id": "a", "close_context": True, "immediate": True}),
}  # internal inputs come without a frame


@_every_pair(ServerContextState, ServerContextInput)
def test_every_context_pair(
    state: ServerContextState, event: ServerContextInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _multi_in(state)
    refusals = {C.IDLE: "unknown context 'a'", C.CLOSING: "context 'a' is closing"}

    def refused() -> Any:
        if event in SERVER_CONTEXT_LOCAL_INPUTS:
            return pytest.raises(LocalProtocolError, match="does not take")
        return pytest.raises(RemoteProtocolError, match=f"^{re.escape(refusals[state])}$")

    _walk(
        monkeypatch,
        _server._CONTEXT_ACTIONS,
        SERVER_CONTEXT_TRANSITIONS.get((state, event)),
        lambda: s._process("a", event, _CONTEXT_MSGS.get(event), 1.0),
        lambda: s.context_state("a"),
        refused,
    )


def test_a_refused_client_frame_becomes_an_error_frame_for_its_context() -> None:
    s = _multi_in(C.CLOSING)
    s.receive_message('{"context_id": "a", "text": "late"}', 1.0)
    error = json.loads(s.messages_to_send()[0])
    assert error["error"] == "context 'a' is closing" and error["context_id"] == "a"
    assert s.context_state("a") is C.CLOSING


@pytest.mark.parametrize(
    ("frame", "inputs"),
    [
        ({"text": "a"}, (CI.TEXT,)),
        ({"text": "a", "flush": True, "keep_alive": True}, (CI.TEXT, CI.FLUSH)),
        ({"flush": True}, (CI.FLUSH,)),
        ({"text": "", "flush": True}, (CI.FLUSH,)),
        ({"keep_alive": True}, (CI.KEEP_ALIVE,)),
        ({"keep_alive": True, "voice_id": 2}, (CI.KEEP_ALIVE,)),
        ({"voice_settings": {"voice_id": 1}}, (CI.INIT,)),
        ({}, (CI.INIT,)),
        ({"close_context": True, "text": "a"}, (CI.CLOSE,)),
        ({"close_context": True, "immediate": True}, (CI.CLOSE_IMMEDIATE,)),
    ],
)
def test_multi_frames_as_context_inputs(frame: dict[str, Any], inputs: tuple[Any, ...]) -> None:
    assert _server._context_inputs(_frame({"context_id": "a", **frame})) == inputs


def test_every_context_action_has_a_handler() -> None:
    assert set(_server._CONTEXT_ACTIONS) == set(ServerContextAction)
    used = {a for acts, _ in SERVER_CONTEXT_TRANSITIONS.values() for a in acts}
    assert used == set(ServerContextAction)


# -- /ws/tts: a request --------------------------------------------------------------------------
def _request_in(state: ServerRequestState) -> tuple[TTSServerSession, Any]:
    s = TTSServerSession()
    if state is R.QUEUED:
        request = _server._Request("Hello there.", EMPTY_CONFIG)
        s._config = s._config.merged(_frame({"voice_id": 1}).config)
        request.work = s._prepare(request, 0.0)
        request.error = RemoteProtocolError("text required", field="text")
        return s, request
    if state is R.REFUSED:
        s.receive_message('{"text": "   ", "voice_id": 1}', 0.0)  # text required
        request = None
    else:
        s.receive_message('{"text": "Hello there.", "voice_id": 1}', 0.0)
        request = s._current
        assert request is not None
        if state is R.DONE:
            for event in list(s.events()):
                assert isinstance(event, SynthesisRequested)
                s.complete_chunk(event.ref, 1.0, 0.0)
        elif state is R.CANCELLED:
            s.receive_message('{"cancel": true}', 0.0)
    if request is None:  # a refused request is gone: rebuild its record
        request = _server._Request("   ", EMPTY_CONFIG, state=R.REFUSED)
    assert request.state is state
    s.messages_to_send()
    return s, request


@_every_pair(ServerRequestState, ServerRequestInput)
def test_every_request_pair(
    state: ServerRequestState, event: ServerRequestInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, request = _request_in(state)
    _walk(
        monkeypatch,
        _server._REQUEST_ACTIONS,
        SERVER_REQUEST_TRANSITIONS.get((state, event)),
        lambda: s._process(request, event, 1.0),
        lambda: request.state,
        lambda: pytest.raises(LocalProtocolError, match="does not take"),
    )


def test_requests_walk_their_machine_through_the_public_api() -> None:
    s = TTSServerSession()
    s.receive_message('{"text": "One.", "voice_id": 1}', 0.0)
    s.receive_message('{"text": "   ", "voice_id": 1}', 0.0)  # waits, then is refused
    s.receive_message('{"text": "Three.", "voice_id": 1}', 0.0)
    first = s._current
    assert first is not None and first.state is R.SPEAKING
    waiting = list(s._queue)
    assert [r.state for r in waiting] == [R.QUEUED, R.QUEUED]
    for event in list(s.events()):
        assert isinstance(event, SynthesisRequested)
        s.complete_chunk(event.ref, 1.0, 0.0)
    assert first.state is R.DONE
    assert [r.state for r in waiting] == [R.REFUSED, R.SPEAKING]
    s.receive_message('{"cancel": true}', 0.0)
    assert waiting[1].state is R.CANCELLED and s._current is None
    frames = [json.loads(m) for m in s.messages_to_send()]
    assert [f["error"] for f in frames if "error_code" in f] == ["text required"]
    assert sum(1 for f in frames if f.get("final")) == 1
    assert sum(1 for f in frames if f.get("interrupted")) == 1


def test_every_request_action_has_a_handler() -> None:
    assert set(_server._REQUEST_ACTIONS) == set(ServerRequestAction)
    used = {a for acts, _ in SERVER_REQUEST_TRANSITIONS.values() for a in acts}
    assert used == set(ServerRequestAction)


# -- what the tables' entries mean on the wire (the walk above checks the code follows the
# -- tables; these check a few entries against the protocol) ----------------------------------
def _requests(session: Any) -> list[SynthesisRequested]:
    return [e for e in session.events() if isinstance(e, SynthesisRequested)]


def test_cancel_abandons_an_open_context_but_not_a_closing_one() -> None:
    s = MultiServerSession()
    for cid in ("a", "b"):
        s.receive_message(json.dumps({"context_id": cid, "text": "Hello there", **_VOICE}), 0.0)
        s.receive_message(json.dumps({"context_id": cid, "flush": True}), 0.0)
    s.receive_message('{"context_id": "b", "close_context": true}', 0.0)
    refs = {r.ref.context_id: r.ref for r in _requests(s)}
    s.messages_to_send()
    s.receive_message('{"cancel": true}', 0.0)  # every context
    cancelled = [e.ref for e in s.events() if isinstance(e, _server.SynthesisCancelled)]
    assert cancelled == [refs["a"]]  # the closing context's audio still plays out
    assert s.send_audio(refs["a"], b"\0\0", 0.0) is False
    assert s.send_audio(refs["b"], b"\0\0", 0.0) is True
    assert s.context_state("a") is C.OPEN and s.context_state("b") is C.CLOSING
    assert s.complete_chunk(refs["b"], 1.0, 0.0)
    assert s.context_state("b") is C.CLOSED


def test_close_socket_while_a_turn_drains_ends_the_turn_then_closes() -> None:
    s = StreamServerSession()
    s.receive_message('{"text": "Hello there", "voice_id": 1, "flush": true}', 0.0)
    (request,) = _requests(s)
    s.receive_message('{"close_socket": true}', 0.0)
    assert s.state is T.DRAINING and s.close_code is None
    s.messages_to_send()
    s.complete_chunk(request.ref, 1.0, 0.0)
    frames = [json.loads(m) for m in s.messages_to_send()]
    assert [next(iter(f)) for f in frames] == ["chunk_complete", "final", "session_closed"]
    assert s.state is T.IDLE and s.close_code == 1000


def test_frames_behind_a_draining_turn_wait_whole_and_in_order() -> None:
    s = StreamServerSession()
    s.receive_message('{"text": "First turn", "voice_id": 1, "flush": true}', 0.0)
    (first,) = _requests(s)
    s.receive_message('{"text": "Second turn", "voice_id": 2, "flush": true}', 0.0)
    s.receive_message('{"close_socket": true}', 0.0)
    assert s.state is T.DRAINING and s.turns_started == 1
    assert s.held_chars() == len("First turn") + len("Second turn")
    s.complete_chunk(first.ref, 1.0, 0.0)
    (second,) = _requests(s)
    assert second.params.voice_id == 2 and s.turns_started == 2
    assert s.state is T.DRAINING and s.close_code is None
    s.complete_chunk(second.ref, 1.0, 0.0)
    assert s.close_code == 1000
