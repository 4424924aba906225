"""State machines as data (h11 ``_state.py`` and h2 ``stream.py`` style).

Every table maps ``(state, input) -> (action(s), next state)``: a session looks the pair up,
moves to the next state and runs what the table names (a client table: one action or ``None``,
nothing beyond the move; a server table: a tuple of actions). A pair that is not in a table is
forbidden: for a local input (something the application asked for, or the session's own timers
and bookkeeping) the session raises :class:`LocalProtocolError`; for a remote input the client
drops and counts the frame (it is tolerant about what it accepts, rulings.md#guiding-rule) and
the server refuses it with an error frame. The client's ``*_TRANSITIONS`` are its tables without
the actions. :data:`MACHINES` lists every machine; the documentation's state diagrams are
generated from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "CLIENT_CONTEXT_TABLE",
    "CLIENT_CONTEXT_TRANSITIONS",
    "CLIENT_REQUEST_TABLE",
    "CLIENT_REQUEST_TRANSITIONS",
    "CLIENT_TURN_TABLE",
    "CLIENT_TURN_TRANSITIONS",
    "MACHINES",
    "SERVER_CONTEXT_TRANSITIONS",
    "SERVER_REQUEST_TRANSITIONS",
    "SERVER_TURN_TRANSITIONS",
    "ClientAction",
    "ClientContextState",
    "ClientRequestState",
    "ClientTurnState",
    "ContextInput",
    "Machine",
    "RequestInput",
    "ServerContextAction",
    "ServerContextInput",
    "ServerContextState",
    "ServerRequestAction",
    "ServerRequestInput",
    "ServerRequestState",
    "ServerTurnAction",
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
# Server role: h2-style tables, ``(state, input) -> (actions, next state)``. The session sets
# the next state first and then runs the actions in order (an action that refuses its input
# raises before it changes anything, and the session restores the state); a pair that is not in
# a table is a bug in the caller for an internal input (:class:`LocalProtocolError`) and a
# refused frame for a client input (:class:`RemoteProtocolError`).


class ServerTurnState(_State):
    """A ``/ws/tts/stream`` server turn (protocol.md#turn-state-machine, rulings.md#turns)."""

    IDLE = "idle"  # no turn: the next non-empty text starts one
    ACTIVE = "active"  # text accumulates; chunks are cut at boundaries
    DRAINING = "draining"  # flushed: remaining chunks are spoken, then final + session_closed


class ServerTurnInput(_State):
    # from a client frame
    TEXT = "text"  # non-empty text
    CONFIG = "config"  # config fields without text
    FLUSH = "flush"  # flush, or close / end_session
    CANCEL = "cancel"
    CLOSE_SOCKET = "close_socket"
    # internal
    IDLE_TIMEOUT = "idle_timeout"  # no text for the idle auto-flush delay
    DRAINED = "drained"  # last chunk complete after a flush


class ServerTurnAction(_State):
    START = "start"  # open a turn with the frame's text and config (refused: nothing applies)
    ADD_TEXT = "add_text"  # feed the turn; config changes apply from the next turn
    CONFIG = "config"  # merge the frame's config into the connection's
    FLUSH = "flush"  # what is buffered becomes chunks; final + session_closed after the last
    WARN_IDLE = "warn_idle"  # the idle auto-flush warning frame
    QUEUE = "queue"  # the frame waits for the next turn (bounded: a full queue refuses it)
    CANCEL = "cancel"  # drop the turn and the waiting frames; interrupted
    CLOSE = "close"  # session_closed, then close the socket
    CLOSE_AFTER = "close_after"  # close once the turn is over
    QUEUE_CLOSE = "queue_close"  # close after the turn, behind the frames waiting for it
    FINISH = "finish"  # final + session_closed; then the waiting frames apply, in order


SERVER_TURN_LOCAL_INPUTS = frozenset({ServerTurnInput.IDLE_TIMEOUT, ServerTurnInput.DRAINED})

_S, _SI, _SA = ServerTurnState, ServerTurnInput, ServerTurnAction
SERVER_TURN_TRANSITIONS: Mapping[
    tuple[ServerTurnState, ServerTurnInput], tuple[tuple[ServerTurnAction, ...], ServerTurnState]
] = {
    (_S.IDLE, _SI.TEXT): ((_SA.START,), _S.ACTIVE),
    (_S.IDLE, _SI.CONFIG): ((_SA.CONFIG,), _S.IDLE),
    (_S.IDLE, _SI.FLUSH): ((), _S.IDLE),  # flush with no turn is ignored (rulings.md#ruling-7)
    (_S.IDLE, _SI.CANCEL): ((_SA.CANCEL,), _S.IDLE),  # interrupted anyway (rulings.md#ruling-9)
    (_S.IDLE, _SI.CLOSE_SOCKET): ((_SA.CLOSE,), _S.IDLE),
    (_S.ACTIVE, _SI.TEXT): ((_SA.ADD_TEXT,), _S.ACTIVE),
    (_S.ACTIVE, _SI.CONFIG): ((_SA.CONFIG,), _S.ACTIVE),
    (_S.ACTIVE, _SI.FLUSH): ((_SA.FLUSH,), _S.DRAINING),
    (_S.ACTIVE, _SI.CANCEL): ((_SA.CANCEL,), _S.IDLE),
    (_S.ACTIVE, _SI.CLOSE_SOCKET): ((_SA.CLOSE_AFTER, _SA.FLUSH), _S.DRAINING),
    (_S.ACTIVE, _SI.IDLE_TIMEOUT): ((_SA.WARN_IDLE, _SA.FLUSH), _S.DRAINING),
    # text, config and flushes while a turn drains belong to the next turn
    (_S.DRAINING, _SI.TEXT): ((_SA.QUEUE,), _S.DRAINING),
    (_S.DRAINING, _SI.CONFIG): ((_SA.QUEUE,), _S.DRAINING),
    (_S.DRAINING, _SI.FLUSH): ((_SA.QUEUE,), _S.DRAINING),
    (_S.DRAINING, _SI.CANCEL): ((_SA.CANCEL,), _S.IDLE),
    (_S.DRAINING, _SI.CLOSE_SOCKET): ((_SA.QUEUE_CLOSE,), _S.DRAINING),
    (_S.DRAINING, _SI.DRAINED): ((_SA.FINISH,), _S.IDLE),
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

_CR, _CRI = ClientRequestState, RequestInput
#: A ``/ws/tts`` request: ``(state, input) -> (action, next state)``.
CLIENT_REQUEST_TABLE: Mapping[
    tuple[ClientRequestState, RequestInput], tuple[ClientAction | None, ClientRequestState]
] = {
    (_CR.PENDING, _CRI.CANCEL): (None, _CR.CANCELLING),
    (_CR.PENDING, _CRI.OUTPUT): (_A.DELIVER, _CR.PENDING),
    (_CR.PENDING, _CRI.WARNING): (_A.WARN, _CR.PENDING),
    (_CR.PENDING, _CRI.FINAL): (_A.FINAL, _CR.DONE),
    (_CR.PENDING, _CRI.ERROR): (_A.FAIL, _CR.FAILED),
    (_CR.PENDING, _CRI.CONNECTION_LOST): (_A.ABORT, _CR.ABORTED),
    # it ended on the server before the cancel reached it: the server cancels the next one
    (_CR.CANCELLING, _CRI.FINAL): (_A.RETARGET, _CR.CANCELLED),
    (_CR.CANCELLING, _CRI.ERROR): (_A.RETARGET, _CR.CANCELLED),
    (_CR.CANCELLING, _CRI.INTERRUPTED): (_A.INTERRUPT, _CR.CANCELLED),
    (_CR.CANCELLING, _CRI.CANCEL_TIMEOUT): (_A.ABANDON, _CR.CANCELLED),
    (_CR.CANCELLING, _CRI.CONNECTION_LOST): (_A.ABORT, _CR.ABORTED),
}
CLIENT_REQUEST_TRANSITIONS: Mapping[tuple[ClientRequestState, RequestInput], ClientRequestState] = {
    pair: new for pair, (_, new) in CLIENT_REQUEST_TABLE.items()
}


class ServerContextState(_State):
    """A ``/ws/tts/multi`` server context (protocol.md#multi, rulings.md#multi)."""

    IDLE = "idle"  # no such context on this socket (yet)
    OPEN = "open"
    CLOSING = "closing"  # graceful close_context: context_closed after its last final
    CLOSED = "closed"  # tombstoned: late frames for it are counted and dropped


class ServerContextInput(_State):
    # from a client frame naming the context
    TEXT = "text"  # non-empty text
    FLUSH = "flush"
    KEEP_ALIVE = "keep_alive"  # keep_alive without text or flush
    INIT = "init"  # none of the above: config / voice_settings (the init frame)
    CANCEL = "cancel"  # for this context, or for all of them
    CLOSE = "close"  # close_context
    CLOSE_IMMEDIATE = "close_immediate"  # close_context with immediate
    # internal
    FLUSH_DONE = "flush_done"  # a flush's audio is all sent; more text is queued behind it
    DRAINED = "drained"  # a flush's audio is all sent and nothing is left
    TIMEOUT = "timeout"  # inactivity timeout


class ServerContextAction(_State):
    CREATE = "create"  # context_created (a tombstoned id is reused)
    ADD_TEXT = "add_text"  # feed the context's chunker (a voiceless context refuses text)
    FLUSH = "flush"  # buffered text becomes chunks and a flush mark: final after them
    TOUCH = "touch"  # the inactivity timer restarts
    ABANDON = "abandon"  # barge-in: drop the cycle's text and audio; finals are no longer owed
    FINAL = "final"  # final for the flush reached; the next cycle starts
    DROP = "drop"  # stop the engine, drop buffered and queued text
    TIMED_OUT = "timed_out"  # context_timeout
    CLOSED = "closed"  # context_closed (+ session_closed if the socket is closing); tombstone
    LATE = "late"  # the frame crossed context_closed on the wire: counted, dropped


SERVER_CONTEXT_LOCAL_INPUTS = frozenset(
    {ServerContextInput.FLUSH_DONE, ServerContextInput.DRAINED, ServerContextInput.TIMEOUT}
)

_M, _MI, _MA = ServerContextState, ServerContextInput, ServerContextAction
SERVER_CONTEXT_TRANSITIONS: Mapping[
    tuple[ServerContextState, ServerContextInput],
    tuple[tuple[ServerContextAction, ...], ServerContextState],
] = {
    # close_context for a context never seen is refused ("unknown context")
    (_M.IDLE, _MI.TEXT): ((_MA.CREATE, _MA.ADD_TEXT), _M.OPEN),
    (_M.IDLE, _MI.FLUSH): ((_MA.CREATE, _MA.FLUSH), _M.OPEN),
    (_M.IDLE, _MI.KEEP_ALIVE): ((), _M.IDLE),  # a keep-alive creates nothing
    (_M.IDLE, _MI.INIT): ((_MA.CREATE,), _M.OPEN),
    (_M.IDLE, _MI.CANCEL): ((), _M.IDLE),
    (_M.OPEN, _MI.TEXT): ((_MA.ADD_TEXT,), _M.OPEN),
    (_M.OPEN, _MI.FLUSH): ((_MA.FLUSH,), _M.OPEN),
    (_M.OPEN, _MI.KEEP_ALIVE): ((_MA.TOUCH,), _M.OPEN),
    (_M.OPEN, _MI.INIT): ((_MA.TOUCH,), _M.OPEN),
    (_M.OPEN, _MI.CANCEL): ((_MA.ABANDON,), _M.OPEN),
    (_M.OPEN, _MI.CLOSE): ((_MA.FLUSH,), _M.CLOSING),
    (_M.OPEN, _MI.CLOSE_IMMEDIATE): ((_MA.DROP, _MA.CLOSED), _M.CLOSED),
    (_M.OPEN, _MI.FLUSH_DONE): ((_MA.FINAL,), _M.OPEN),
    (_M.OPEN, _MI.DRAINED): ((_MA.FINAL,), _M.OPEN),
    (_M.OPEN, _MI.TIMEOUT): ((_MA.TIMED_OUT, _MA.DROP, _MA.CLOSED), _M.CLOSED),
    # a closing context refuses text, flushes and keep-alives ("context is closing")
    (_M.CLOSING, _MI.CANCEL): ((), _M.CLOSING),  # interrupted, but its audio still plays out
    (_M.CLOSING, _MI.CLOSE): ((), _M.CLOSING),
    (_M.CLOSING, _MI.CLOSE_IMMEDIATE): ((_MA.DROP, _MA.CLOSED), _M.CLOSED),
    (_M.CLOSING, _MI.FLUSH_DONE): ((_MA.FINAL,), _M.CLOSING),
    (_M.CLOSING, _MI.DRAINED): ((_MA.FINAL, _MA.CLOSED), _M.CLOSED),
    (_M.CLOSING, _MI.TIMEOUT): ((_MA.TIMED_OUT, _MA.DROP, _MA.CLOSED), _M.CLOSED),
    (_M.CLOSED, _MI.TEXT): ((_MA.CREATE, _MA.ADD_TEXT), _M.OPEN),  # text reuses the id
    (_M.CLOSED, _MI.FLUSH): ((_MA.LATE,), _M.CLOSED),
    (_M.CLOSED, _MI.KEEP_ALIVE): ((), _M.CLOSED),
    (_M.CLOSED, _MI.INIT): ((_MA.LATE,), _M.CLOSED),
    (_M.CLOSED, _MI.CANCEL): ((), _M.CLOSED),
    (_M.CLOSED, _MI.CLOSE): ((_MA.LATE,), _M.CLOSED),
    (_M.CLOSED, _MI.CLOSE_IMMEDIATE): ((_MA.LATE,), _M.CLOSED),
}


class ServerRequestState(_State):
    """A ``/ws/tts`` server request: one speaks at a time, the rest wait in order."""

    QUEUED = "queued"
    SPEAKING = "speaking"
    DONE = "done"  # final sent (terminal)
    CANCELLED = "cancelled"  # interrupted (terminal)
    REFUSED = "refused"  # one error frame (terminal)


class ServerRequestInput(_State):
    START = "start"  # its turn came and it is valid
    INVALID = "invalid"  # its turn came and it is not (no text, too long, no voice)
    SPOKEN = "spoken"  # its last chunk is complete
    CANCEL = "cancel"  # from a client frame


class ServerRequestAction(_State):
    SPEAK = "speak"  # hand its chunks to the engine
    REFUSE = "refuse"  # the error frame
    FINAL = "final"  # final with stats and usage
    DROP = "drop"  # stop the engine, drop its text


_R, _RI, _RA = ServerRequestState, ServerRequestInput, ServerRequestAction
SERVER_REQUEST_TRANSITIONS: Mapping[
    tuple[ServerRequestState, ServerRequestInput],
    tuple[tuple[ServerRequestAction, ...], ServerRequestState],
] = {
    (_R.QUEUED, _RI.START): ((_RA.SPEAK,), _R.SPEAKING),
    (_R.QUEUED, _RI.INVALID): ((_RA.REFUSE,), _R.REFUSED),
    (_R.SPEAKING, _RI.SPOKEN): ((_RA.FINAL,), _R.DONE),
    (_R.SPEAKING, _RI.CANCEL): ((_RA.DROP,), _R.CANCELLED),
}


# ---------------------------------------------------------------------------------------------
# The registry: every machine, for the documentation's generated state diagrams
# (``docs/_hooks.py`` draws one section per entry, in this order).


@dataclass(frozen=True, slots=True)
class Machine:
    """One state machine: its table (``(state, input) -> next state``, or h2-style
    ``-> (actions, next state)``) and what the documentation says about it."""

    name: str  # the table's name in this module
    title: str
    table: Mapping[tuple[Any, Any], Any]
    doc: str


MACHINES: tuple[Machine, ...] = (
    Machine(
        "CLIENT_TURN_TRANSITIONS",
        "A client turn (`/ws/tts/stream`)",
        CLIENT_TURN_TRANSITIONS,
        "Local inputs: `send_text`, `flush`, `close`, `cancel` (and the `cancel_timeout` timer)."
        " Remote inputs: `output` (`generation_started`, `audio`, `word_timestamps`,"
        " `chunk_complete`), `idle_warning`, `final`, `session_closed`, `interrupted`, and the"
        " connection going away.",
    ),
    Machine(
        "CLIENT_CONTEXT_TRANSITIONS",
        "A client context (`/ws/tts/multi`)",
        CLIENT_CONTEXT_TRANSITIONS,
        "Local inputs: `send` (text, flush, keep-alive, cancel), `close`, `close_immediate`."
        " Remote inputs: `created`, `output` (including `final`), `timeout`, `closed`,"
        " `rejected` (`TOO_MANY_CONTEXTS` for this context), and the connection going away."
        " `CLOSED` contexts are tombstoned: late frames for them are dropped.",
    ),
    Machine(
        "CLIENT_REQUEST_TRANSITIONS",
        "A client request (`/ws/tts`)",
        CLIENT_REQUEST_TRANSITIONS,
        "Requests are answered in order. Local input: `cancel` (then the `cancel_timeout`"
        " timer). Remote inputs: `output` (`generation_started`, `audio`, `word_timestamps`,"
        " `chunk_complete`), `warning`, `final`, `error`, `interrupted`, and the connection"
        " going away. A request that ends on the server before its cancel reaches it passes"
        " the cancel on to the next one.",
    ),
    Machine(
        "SERVER_TURN_TRANSITIONS",
        "A server turn (`/ws/tts/stream`)",
        SERVER_TURN_TRANSITIONS,
        "Inputs from a client frame, in the service's order: `cancel`, then the frame's"
        " non-empty `text` (which carries its config) or its config alone, then `flush` (a"
        " flush, `close` or `end_session`); `close_socket` takes the frame's text first."
        " Internal inputs: `idle_timeout` (the 5 s idle auto-flush) and `drained` (the last"
        " chunk of a flushed turn is complete). Frames arriving while a turn drains wait,"
        " whole and in order, for the next turn.",
    ),
    Machine(
        "SERVER_CONTEXT_TRANSITIONS",
        "A server context (`/ws/tts/multi`)",
        SERVER_CONTEXT_TRANSITIONS,
        "Inputs from a client frame naming the context: `text`, `flush`, `keep_alive`,"
        " `init` (config or `voice_settings` only), `cancel` (for this context or all of"
        " them), `close` and `close_immediate` (`close_context`). Internal inputs:"
        " `flush_done` / `drained` (a flush's audio is all sent, with or without more text"
        " queued behind it) and `timeout` (inactivity). A context never seen is `IDLE`; a"
        " closed one is tombstoned (`CLOSED`): frames that crossed its `context_closed` are"
        " counted and dropped, and new text reuses its id. Input a state does not take is"
        " refused with an error frame (`unknown context`, `context is closing`).",
    ),
    Machine(
        "SERVER_REQUEST_TRANSITIONS",
        "A server request (`/ws/tts`)",
        SERVER_REQUEST_TRANSITIONS,
        "Requests wait in order and one speaks at a time. When its turn comes a request is"
        " `start`ed, or refused (`invalid`: no text, too long, no voice) with one error"
        " frame; it ends with `final` once `spoken`, or with `interrupted` on `cancel`.",
    ),
)
