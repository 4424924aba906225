"""State machines as data (h11 ``_state.py`` style).

Each table maps ``(state, input) -> next state``. A pair that is not in a table is forbidden:
for a local input (something the application asked for) the session raises
:class:`LocalProtocolError`; for a remote input the frame is dropped and counted (the client is
tolerant about what it accepts, rulings.md#guiding-rule). The documentation's state diagrams are
generated from these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

__all__ = [
    "CLIENT_CONTEXT_TRANSITIONS",
    "CLIENT_TURN_TRANSITIONS",
    "SERVER_TURN_TRANSITIONS",
    "ClientContextState",
    "ClientTurnState",
    "ContextInput",
    "ServerTurnInput",
    "ServerTurnState",
    "TurnInput",
]


class _State(Enum):
    """An enum whose members hash by identity (they are singletons; equality is identity too):
    the transition tables are looked up on every frame, and ``Enum.__hash__`` is Python code."""

    __hash__ = object.__hash__


class ClientTurnState(_State):
    OPEN = "open"  # text may still be sent
    FLUSHED = "flushed"  # flush/close sent (or server auto-flushed): waiting for final
    FINAL = "final"  # final received: waiting for session_closed
    CANCELLING = "cancelling"  # cancel sent: everything until interrupted is dropped
    DONE = "done"  # session_closed (terminal)
    CANCELLED = "cancelled"  # interrupted (terminal)
    ABORTED = "aborted"  # connection lost (terminal)
    REFUSED = "refused"  # the server refused the turn before any output: no voice (terminal)


class TurnInput(_State):
    # local
    SEND_TEXT = "send_text"
    FLUSH = "flush"
    CLOSE = "close"
    CANCEL = "cancel"
    CANCEL_TIMEOUT = "cancel_timeout"
    # remote
    OUTPUT = "output"  # generation_started / audio / word_timestamps / chunk_complete
    IDLE_WARNING = "idle_warning"
    FINAL = "final"
    SESSION_CLOSED = "session_closed"
    INTERRUPTED = "interrupted"
    CONNECTION_LOST = "connection_lost"
    REFUSED = "refused"  # MISSING_VOICE_ID / NOT_FOUND before any output: the text is dropped


LOCAL_TURN_INPUTS = frozenset(
    {TurnInput.SEND_TEXT, TurnInput.FLUSH, TurnInput.CLOSE, TurnInput.CANCEL}
)
TERMINAL_TURN_STATES = frozenset(
    {ClientTurnState.DONE, ClientTurnState.CANCELLED, ClientTurnState.ABORTED,
     ClientTurnState.REFUSED}
)

_T, _I = ClientTurnState, TurnInput
CLIENT_TURN_TRANSITIONS: Mapping[tuple[ClientTurnState, TurnInput], ClientTurnState] = {
    (_T.OPEN, _I.SEND_TEXT): _T.OPEN,
    (_T.OPEN, _I.FLUSH): _T.FLUSHED,
    (_T.OPEN, _I.CLOSE): _T.FLUSHED,
    (_T.OPEN, _I.CANCEL): _T.CANCELLING,
    (_T.OPEN, _I.OUTPUT): _T.OPEN,
    (_T.OPEN, _I.IDLE_WARNING): _T.FLUSHED,  # the server's 5 s idle auto-flush
    (_T.OPEN, _I.FINAL): _T.FINAL,
    (_T.OPEN, _I.SESSION_CLOSED): _T.DONE,
    (_T.OPEN, _I.CONNECTION_LOST): _T.ABORTED,
    (_T.OPEN, _I.REFUSED): _T.REFUSED,
    (_T.FLUSHED, _I.CANCEL): _T.CANCELLING,
    (_T.FLUSHED, _I.OUTPUT): _T.FLUSHED,
    (_T.FLUSHED, _I.IDLE_WARNING): _T.FLUSHED,
    (_T.FLUSHED, _I.FINAL): _T.FINAL,
    (_T.FLUSHED, _I.SESSION_CLOSED): _T.DONE,  # legacy servers without ``final``
    (_T.FLUSHED, _I.CONNECTION_LOST): _T.ABORTED,
    (_T.FLUSHED, _I.REFUSED): _T.REFUSED,
    (_T.FINAL, _I.CANCEL): _T.CANCELLING,
    (_T.FINAL, _I.SESSION_CLOSED): _T.DONE,
    (_T.FINAL, _I.CONNECTION_LOST): _T.ABORTED,
    (_T.CANCELLING, _I.INTERRUPTED): _T.CANCELLED,
    (_T.CANCELLING, _I.CANCEL_TIMEOUT): _T.CANCELLED,
    (_T.CANCELLING, _I.CONNECTION_LOST): _T.CANCELLED,
}


class ClientContextState(_State):
    CREATING = "creating"  # init frame sent, context_created not yet seen
    OPEN = "open"
    CLOSING = "closing"  # graceful close_context sent: audio still flows until context_closed
    CLOSING_IMMEDIATE = "closing_immediate"  # immediate close sent: everything is dropped
    TIMED_OUT = "timed_out"  # context_timeout received: context_closed follows
    CLOSED = "closed"  # terminal (tombstoned)


class ContextInput(_State):
    # local
    SEND = "send"  # text, flush, keep-alive, cancel
    CLOSE = "close"
    CLOSE_IMMEDIATE = "close_immediate"
    # remote
    CREATED = "created"
    OUTPUT = "output"  # generation_started/audio/word_timestamps/chunk_complete/final
    TIMEOUT = "timeout"
    CLOSED = "closed"
    REJECTED = "rejected"  # TOO_MANY_CONTEXTS for this context
    CONNECTION_LOST = "connection_lost"


_C, _X = ClientContextState, ContextInput
CLIENT_CONTEXT_TRANSITIONS: Mapping[tuple[ClientContextState, ContextInput], ClientContextState] = {
    (_C.CREATING, _X.SEND): _C.CREATING,
    (_C.CREATING, _X.CLOSE): _C.CLOSING,
    (_C.CREATING, _X.CLOSE_IMMEDIATE): _C.CLOSING_IMMEDIATE,
    (_C.CREATING, _X.CREATED): _C.OPEN,
    (_C.CREATING, _X.OUTPUT): _C.OPEN,
    (_C.CREATING, _X.TIMEOUT): _C.TIMED_OUT,
    (_C.CREATING, _X.CLOSED): _C.CLOSED,
    (_C.CREATING, _X.REJECTED): _C.CLOSED,
    (_C.CREATING, _X.CONNECTION_LOST): _C.CLOSED,
    (_C.OPEN, _X.SEND): _C.OPEN,
    (_C.OPEN, _X.CLOSE): _C.CLOSING,
    (_C.OPEN, _X.CLOSE_IMMEDIATE): _C.CLOSING_IMMEDIATE,
    (_C.OPEN, _X.OUTPUT): _C.OPEN,
    (_C.OPEN, _X.TIMEOUT): _C.TIMED_OUT,
    (_C.OPEN, _X.CLOSED): _C.CLOSED,
    (_C.OPEN, _X.CONNECTION_LOST): _C.CLOSED,
    (_C.CLOSING, _X.CLOSE_IMMEDIATE): _C.CLOSING_IMMEDIATE,
    (_C.CLOSING, _X.CREATED): _C.CLOSING,
    (_C.CLOSING, _X.OUTPUT): _C.CLOSING,
    (_C.CLOSING, _X.TIMEOUT): _C.TIMED_OUT,
    (_C.CLOSING, _X.CLOSED): _C.CLOSED,
    (_C.CLOSING, _X.REJECTED): _C.CLOSED,
    (_C.CLOSING, _X.CONNECTION_LOST): _C.CLOSED,
    (_C.CLOSING_IMMEDIATE, _X.CREATED): _C.CLOSING_IMMEDIATE,
    (_C.CLOSING_IMMEDIATE, _X.TIMEOUT): _C.CLOSING_IMMEDIATE,
    (_C.CLOSING_IMMEDIATE, _X.CLOSED): _C.CLOSED,
    (_C.CLOSING_IMMEDIATE, _X.REJECTED): _C.CLOSED,
    (_C.CLOSING_IMMEDIATE, _X.CONNECTION_LOST): _C.CLOSED,
    (_C.TIMED_OUT, _X.CLOSED): _C.CLOSED,
    (_C.TIMED_OUT, _X.CONNECTION_LOST): _C.CLOSED,
}


# ---------------------------------------------------------------------------------------------
# Server role


class ServerTurnState(_State):
    """A ``/ws/tts/stream`` server turn (protocol.md#turn-state-machine, rulings.md#turns)."""

    IDLE = "idle"  # no turn: the next non-empty text starts one
    ACTIVE = "active"  # text accumulates; chunks are cut at boundaries
    DRAINING = "draining"  # flushed: remaining chunks are spoken, then final + session_closed


class ServerTurnInput(_State):
    TEXT = "text"  # non-empty text
    FLUSH = "flush"  # flush, close/end_session, or the idle auto-flush
    CANCEL = "cancel"
    DRAINED = "drained"  # last chunk complete after a flush: final + session_closed sent


_S, _SI = ServerTurnState, ServerTurnInput
SERVER_TURN_TRANSITIONS: Mapping[tuple[ServerTurnState, ServerTurnInput], ServerTurnState] = {
    (_S.IDLE, _SI.TEXT): _S.ACTIVE,
    (_S.IDLE, _SI.FLUSH): _S.IDLE,  # flush with no turn is ignored (rulings.md#ruling-7)
    (_S.IDLE, _SI.CANCEL): _S.IDLE,  # acknowledged with interrupted anyway (rulings.md#ruling-9)
    (_S.ACTIVE, _SI.TEXT): _S.ACTIVE,
    (_S.ACTIVE, _SI.FLUSH): _S.DRAINING,
    (_S.ACTIVE, _SI.CANCEL): _S.IDLE,
    # text/flush while DRAINING belong to the next turn: they are queued, not inputs here
    (_S.DRAINING, _SI.CANCEL): _S.IDLE,
    (_S.DRAINING, _SI.DRAINED): _S.IDLE,
}
