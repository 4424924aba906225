"""State machines as data (h11 ``_state.py``, h2 ``stream.py`` style).

The client tables map ``(state, input) -> (action, next state)``: a session looks the pair up,
moves to the next state and runs the action (``None``: nothing beyond the move; the command that
gave the input does its own sending). A pair that is not in a table is forbidden: for a local
input (something the application asked for) the session raises :class:`LocalProtocolError`; for
a remote input the frame is dropped and counted (the client is tolerant about what it accepts,
rulings.md#guiding-rule). ``*_TRANSITIONS`` are the same tables without the actions
(``(state, input) -> next state``); the documentation's state diagrams are generated from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

__all__ = [
    "CLIENT_CONTEXT_TABLE",
    "CLIENT_CONTEXT_TRANSITIONS",
    "CLIENT_REQUEST_TABLE",
    "CLIENT_REQUEST_TRANSITIONS",
    "CLIENT_TURN_TABLE",
    "CLIENT_TURN_TRANSITIONS",
    "SERVER_TURN_TRANSITIONS",
    "ClientAction",
    "ClientContextState",
    "ClientRequestState",
    "ClientTurnState",
    "ContextInput",
    "RequestInput",
    "ServerTurnInput",
    "ServerTurnState",
    "TurnInput",
]


class _State(Enum):
    """An enum whose members hash by identity (they are singletons; equality is identity too):
    the transition tables are looked up on every frame, and ``Enum.__hash__`` is Python code."""

    __hash__ = object.__hash__


class ClientAction(_State):
    """What a client session does on a transition (the actions of the client tables)."""

    MARK_FLUSHED = "mark_flushed"  # the turn takes no more text; its flush time is kept
    DELIVER = "deliver"  # output (generation_started/audio/word_timestamps/chunk_complete)
    WARN = "warn"  # a warning naming the turn
    FINAL = "final"  # TurnFinal / RequestFinal
    CLOSE = "close"  # TurnClosed: the turn is over
    REFUSE = "refuse"  # the refusing error, marked as ending the turn
    INTERRUPT = "interrupt"  # Interrupted (acknowledged)
    ABANDON = "abandon"  # Interrupted(acknowledged=False): the cancel timed out
    ABORT = "abort"  # TurnAborted, and the work's replay
    FAIL = "fail"  # an error frame ended the request
    RETARGET = "retarget"  # the cancelled request ended first: the cancel moves to the next
    CREATED = "created"  # ContextCreated
    TIMED_OUT = "timed_out"  # ContextTimeout
    CLOSE_FLUSH = "close_flush"  # a graceful context close flushes the current cycle
    CONTEXT_CLOSED = "context_closed"  # ContextClosed (tombstoned)
    CLOSED_IMMEDIATE = "closed_immediate"  # ContextClosed of an immediate close (cancelled)
    DISCARD = "discard"  # the context is gone without an event of its own (tombstoned)


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

_T, _I, _A = ClientTurnState, TurnInput, ClientAction
#: The ``/ws/tts/stream`` turn: ``(state, input) -> (action, next state)``.
CLIENT_TURN_TABLE: Mapping[
    tuple[ClientTurnState, TurnInput], tuple[ClientAction | None, ClientTurnState]
] = {
    (_T.OPEN, _I.SEND_TEXT): (None, _T.OPEN),
    (_T.OPEN, _I.FLUSH): (_A.MARK_FLUSHED, _T.FLUSHED),
    (_T.OPEN, _I.CLOSE): (_A.MARK_FLUSHED, _T.FLUSHED),
    (_T.OPEN, _I.CANCEL): (None, _T.CANCELLING),
    (_T.OPEN, _I.OUTPUT): (_A.DELIVER, _T.OPEN),
    (_T.OPEN, _I.IDLE_WARNING): (_A.WARN, _T.FLUSHED),  # the server's 5 s idle auto-flush
    (_T.OPEN, _I.FINAL): (_A.FINAL, _T.FINAL),
    (_T.OPEN, _I.SESSION_CLOSED): (_A.CLOSE, _T.DONE),
    (_T.OPEN, _I.CONNECTION_LOST): (_A.ABORT, _T.ABORTED),
    (_T.OPEN, _I.REFUSED): (_A.REFUSE, _T.REFUSED),
    (_T.FLUSHED, _I.CANCEL): (None, _T.CANCELLING),
    (_T.FLUSHED, _I.OUTPUT): (_A.DELIVER, _T.FLUSHED),
    (_T.FLUSHED, _I.IDLE_WARNING): (_A.WARN, _T.FLUSHED),
    (_T.FLUSHED, _I.FINAL): (_A.FINAL, _T.FINAL),
    (_T.FLUSHED, _I.SESSION_CLOSED): (_A.CLOSE, _T.DONE),  # legacy servers without ``final``
    (_T.FLUSHED, _I.CONNECTION_LOST): (_A.ABORT, _T.ABORTED),
    (_T.FLUSHED, _I.REFUSED): (_A.REFUSE, _T.REFUSED),
    (_T.FINAL, _I.CANCEL): (None, _T.CANCELLING),
    (_T.FINAL, _I.SESSION_CLOSED): (_A.CLOSE, _T.DONE),
    (_T.FINAL, _I.CONNECTION_LOST): (_A.ABORT, _T.ABORTED),
    (_T.CANCELLING, _I.INTERRUPTED): (_A.INTERRUPT, _T.CANCELLED),
    (_T.CANCELLING, _I.CANCEL_TIMEOUT): (_A.ABANDON, _T.CANCELLED),
    (_T.CANCELLING, _I.CONNECTION_LOST): (None, _T.CANCELLED),
}
CLIENT_TURN_TRANSITIONS: Mapping[tuple[ClientTurnState, TurnInput], ClientTurnState] = {
    pair: new for pair, (_, new) in CLIENT_TURN_TABLE.items()
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


LOCAL_CONTEXT_INPUTS = frozenset(
    {ContextInput.SEND, ContextInput.CLOSE, ContextInput.CLOSE_IMMEDIATE}
)

_C, _X = ClientContextState, ContextInput
#: A ``/ws/tts/multi`` context: ``(state, input) -> (action, next state)``.
CLIENT_CONTEXT_TABLE: Mapping[
    tuple[ClientContextState, ContextInput], tuple[ClientAction | None, ClientContextState]
] = {
    (_C.CREATING, _X.SEND): (None, _C.CREATING),
    (_C.CREATING, _X.CLOSE): (_A.CLOSE_FLUSH, _C.CLOSING),
    (_C.CREATING, _X.CLOSE_IMMEDIATE): (None, _C.CLOSING_IMMEDIATE),
    (_C.CREATING, _X.CREATED): (_A.CREATED, _C.OPEN),
    (_C.CREATING, _X.OUTPUT): (_A.DELIVER, _C.OPEN),
    (_C.CREATING, _X.TIMEOUT): (_A.TIMED_OUT, _C.TIMED_OUT),
    (_C.CREATING, _X.CLOSED): (_A.CONTEXT_CLOSED, _C.CLOSED),
    (_C.CREATING, _X.REJECTED): (_A.DISCARD, _C.CLOSED),
    (_C.CREATING, _X.CONNECTION_LOST): (_A.ABORT, _C.CLOSED),
    (_C.OPEN, _X.SEND): (None, _C.OPEN),
    (_C.OPEN, _X.CLOSE): (_A.CLOSE_FLUSH, _C.CLOSING),
    (_C.OPEN, _X.CLOSE_IMMEDIATE): (None, _C.CLOSING_IMMEDIATE),
    (_C.OPEN, _X.OUTPUT): (_A.DELIVER, _C.OPEN),
    (_C.OPEN, _X.TIMEOUT): (_A.TIMED_OUT, _C.TIMED_OUT),
    (_C.OPEN, _X.CLOSED): (_A.CONTEXT_CLOSED, _C.CLOSED),
    (_C.OPEN, _X.CONNECTION_LOST): (_A.ABORT, _C.CLOSED),
    (_C.CLOSING, _X.CLOSE_IMMEDIATE): (None, _C.CLOSING_IMMEDIATE),
    (_C.CLOSING, _X.CREATED): (None, _C.CLOSING),
    (_C.CLOSING, _X.OUTPUT): (_A.DELIVER, _C.CLOSING),
    (_C.CLOSING, _X.TIMEOUT): (_A.TIMED_OUT, _C.TIMED_OUT),
    (_C.CLOSING, _X.CLOSED): (_A.CONTEXT_CLOSED, _C.CLOSED),
    (_C.CLOSING, _X.REJECTED): (_A.DISCARD, _C.CLOSED),
    (_C.CLOSING, _X.CONNECTION_LOST): (_A.ABORT, _C.CLOSED),
    # immediately closed: everything is dropped, nothing more is said until context_closed
    (_C.CLOSING_IMMEDIATE, _X.CREATED): (None, _C.CLOSING_IMMEDIATE),
    (_C.CLOSING_IMMEDIATE, _X.TIMEOUT): (None, _C.CLOSING_IMMEDIATE),
    (_C.CLOSING_IMMEDIATE, _X.CLOSED): (_A.CLOSED_IMMEDIATE, _C.CLOSED),
    (_C.CLOSING_IMMEDIATE, _X.REJECTED): (_A.DISCARD, _C.CLOSED),
    (_C.CLOSING_IMMEDIATE, _X.CONNECTION_LOST): (_A.DISCARD, _C.CLOSED),
    (_C.TIMED_OUT, _X.CLOSED): (_A.CONTEXT_CLOSED, _C.CLOSED),
    (_C.TIMED_OUT, _X.CONNECTION_LOST): (_A.DISCARD, _C.CLOSED),
}
CLIENT_CONTEXT_TRANSITIONS: Mapping[tuple[ClientContextState, ContextInput], ClientContextState] = {
    pair: new for pair, (_, new) in CLIENT_CONTEXT_TABLE.items()
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


# ---------------------------------------------------------------------------------------------
# Client role, /ws/tts requests


class ClientRequestState(_State):
    """A ``/ws/tts`` request on the client (requests are answered in order)."""

    PENDING = "pending"  # sent: its output, then final (or an error), is expected
    CANCELLING = "cancelling"  # cancel sent: its output is dropped until interrupted
    DONE = "done"  # final received (terminal)
    FAILED = "failed"  # an error frame ended it (terminal)
    CANCELLED = "cancelled"  # interrupted, or its cancel timed out (terminal)
    ABORTED = "aborted"  # connection lost (terminal)


class RequestInput(_State):
    # local
    CANCEL = "cancel"
    # remote
    OUTPUT = "output"  # generation_started / audio / word_timestamps / chunk_complete
    WARNING = "warning"
    FINAL = "final"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    CANCEL_TIMEOUT = "cancel_timeout"
    CONNECTION_LOST = "connection_lost"


LOCAL_REQUEST_INPUTS = frozenset({RequestInput.CANCEL})

_R, _RI = ClientRequestState, RequestInput
#: A ``/ws/tts`` request: ``(state, input) -> (action, next state)``.
CLIENT_REQUEST_TABLE: Mapping[
    tuple[ClientRequestState, RequestInput], tuple[ClientAction | None, ClientRequestState]
] = {
    (_R.PENDING, _RI.CANCEL): (None, _R.CANCELLING),
    (_R.PENDING, _RI.OUTPUT): (_A.DELIVER, _R.PENDING),
    (_R.PENDING, _RI.WARNING): (_A.WARN, _R.PENDING),
    (_R.PENDING, _RI.FINAL): (_A.FINAL, _R.DONE),
    (_R.PENDING, _RI.ERROR): (_A.FAIL, _R.FAILED),
    (_R.PENDING, _RI.CONNECTION_LOST): (_A.ABORT, _R.ABORTED),
    # it ended on the server before the cancel reached it: the server cancels the next one
    (_R.CANCELLING, _RI.FINAL): (_A.RETARGET, _R.CANCELLED),
    (_R.CANCELLING, _RI.ERROR): (_A.RETARGET, _R.CANCELLED),
    (_R.CANCELLING, _RI.INTERRUPTED): (_A.INTERRUPT, _R.CANCELLED),
    (_R.CANCELLING, _RI.CANCEL_TIMEOUT): (_A.ABANDON, _R.CANCELLED),
    (_R.CANCELLING, _RI.CONNECTION_LOST): (_A.ABORT, _R.ABORTED),
}
CLIENT_REQUEST_TRANSITIONS: Mapping[tuple[ClientRequestState, RequestInput], ClientRequestState] = {
    pair: new for pair, (_, new) in CLIENT_REQUEST_TABLE.items()
}
