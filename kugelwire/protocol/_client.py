"""Client sessions (message level) for ``/ws/tts/stream``, ``/ws/tts/multi`` and ``/ws/tts``.

Each session is driven the same way, with no I/O and no clock of its own:

* ``receive_message(text, now)`` with every text frame from the server;
* commands (``send_text``, ``flush``, ``cancel``...) that queue outgoing JSON;
* ``messages_to_send()`` to take that JSON; ``next_event()`` / ``events()`` for typed events;
* ``next_deadline()`` / ``handle_timeout(now)`` for the session's timers;
* ``connection_lost(code, reason, now)`` when the socket goes away.

Server frames carry no turn or request id, so they are matched to turns by order, which the
server preserves. Frames of a cancelled turn (or context) that arrive before the server's
``interrupted`` acknowledgement are dropped, never delivered (tombstones), and counted in
:attr:`dropped_frames`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as _json_string  # what dumps() uses
from typing import Any, ClassVar, TypeAlias

from ._config import Config, SettingsUpdate
from ._constants import MULTI_ENDPOINT, RESTART_CODES, STREAM_ENDPOINT, TTS_ENDPOINT
from ._errors import LocalProtocolError
from ._events import (
    FATAL_CODES,
    ChunkComplete,
    ClientEvent,
    ConnectionTerminated,
    ContextClosed,
    ContextCreated,
    ContextTimeout,
    Diagnostic,
    ErrorCode,
    Interrupted,
    RequestFinal,
    ServerError,
    ServerWarning,
    SessionClosed,
    SettingsUpdated,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    TurnMetrics,
    TurnReplay,
    WordTimestamps,
    _audio_chunk,
)
from ._events import _generation_started as _new_generation_started
from ._events import _turn_started as _new_turn_started
from ._messages import (
    AudioFrame,
    ChunkCompleteFrame,
    ContextClosedFrame,
    ContextCreatedFrame,
    ContextTimeoutFrame,
    ErrorFrame,
    FinalFrame,
    GenerationStartedFrame,
    InterruptedFrame,
    ServerMessage,
    SessionClosedFrame,
    SettingsUpdatedFrame,
    WarningFrame,
    WordTimestampsFrame,
    dumps,
    parse_server_message,
)
from ._state import (
    CLIENT_CONTEXT_TABLE,
    CLIENT_REQUEST_TABLE,
    CLIENT_TURN_TABLE,
    LOCAL_CONTEXT_INPUTS,
    LOCAL_REQUEST_INPUTS,
    LOCAL_TURN_INPUTS,
    ClientAction,
    ClientContextState,
    ClientRequestState,
    ClientTurnState,
    ContextInput,
    RequestInput,
    TurnInput,
)

__all__ = [
    "MAX_CONTEXTS",
    "MultiClientSession",
    "StreamClientSession",
    "TTSClientSession",
    "WorkKey",
    "unspoken_text",
]

#: What names a piece of work: a turn or request number, or a context id.
WorkKey: TypeAlias = int | str
#: A frame handler: ``(session, frame, now)``.
_Handler: TypeAlias = Callable[[Any, Any, float], None]
#: An output frame's event: ``(session, cycle, frame, now, context_id)``.
_Output: TypeAlias = Callable[[Any, "_Cycle", Any, float, "str | None"], None]
#: A transition's action: ``(session, turn / request / context, argument, now)``.
_Action: TypeAlias = Callable[[Any, Any, Any, float], None]

MAX_CONTEXTS = 20
#: Abandoned (timed-out) cancels remembered to match a late ``interrupted``; older ones are
#: forgotten (their late ack is then matched to a newer cancel, or dropped).
_MAX_ABANDONED = 16
#: Error codes that refuse a stream turn sent before any of its output (its text is dropped).
_REFUSALS = frozenset({ErrorCode.MISSING_VOICE_ID.value, ErrorCode.NOT_FOUND.value})
_INF = math.inf


def unspoken_text(text: str, spoken: list[str]) -> str:
    """The tail of ``text`` not covered by the ``spoken`` chunk texts, compared ignoring spaces.

    When the chunk texts do not line up with what was sent (a server that normalises text), the
    whole text is reported: text is never declared spoken unless it provably was.
    """
    pos = 0
    n = len(text)
    for chunk in spoken:
        for ch in chunk:
            if ch.isspace():
                continue
            while pos < n and text[pos].isspace():
                pos += 1
            if pos >= n or text[pos] != ch:
                return text
            pos += 1
    return text[pos:].lstrip()


@dataclass(slots=True)
class _Cycle:
    """Output bookkeeping of one turn (stream), request (tts) or flush-cycle (multi context)."""

    number: int
    parts: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    audio_frames: int = 0
    chunk_offsets: dict[int, float] = field(default_factory=dict)
    chunk_texts: dict[int, str] = field(default_factory=dict)
    spoken: list[str] = field(default_factory=list)
    last_chunk: int = 0
    spell_tail: str = ""
    spell_checked: bool = False
    last_idx: int = -1  # idx and chunk_id of the last audio frame: within a chunk idx increases
    last_idx_chunk: int | None = None
    duplicates: int = 0
    #: ``now`` of the first text, the flush and the first audio frame (for TurnMetrics).
    first_text_at: float | None = None
    flushed_at: float | None = None
    first_audio_at: float | None = None

    def on_generation_started(self, msg: GenerationStartedFrame) -> None:
        self.chunk_offsets.setdefault(msg.chunk_id, self.audio_s)
        self.chunk_texts[msg.chunk_id] = msg.text
        self.last_chunk = msg.chunk_id

    def on_audio(self, msg: AudioFrame, now: float) -> float | None:
        """The frame's offset in the cycle's audio; None for a repeated frame (an ``idx`` not
        above the previous frame's of the same chunk), which is not delivered."""
        if msg._has_idx:
            idx = msg.idx
            if idx <= self.last_idx and msg.chunk_id == self.last_idx_chunk:
                self.duplicates += 1
                return None
            self.last_idx, self.last_idx_chunk = idx, msg.chunk_id
        offset = self.audio_s
        if msg.chunk_id is not None:
            self.chunk_offsets.setdefault(msg.chunk_id, offset)
            self.last_chunk = msg.chunk_id
        sr = msg.sr
        self.audio_s = offset + (msg.samples / sr if sr else 0.0)
        if not self.audio_frames:
            self.first_audio_at = now
        self.audio_frames += 1
        return offset

    def words_offset_ms(self, msg: WordTimestampsFrame) -> float:
        chunk = self.last_chunk if msg.chunk_id is None else msg.chunk_id
        return self.chunk_offsets.get(chunk, 0.0) * 1000.0

    def on_chunk_complete(self, msg: ChunkCompleteFrame) -> None:
        self.spoken.append(self.chunk_texts.get(msg.chunk_id, ""))

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def metrics(
        self, ended_at: float, context_id: str | None = None, *, cancelled: bool = False
    ) -> TurnMetrics:
        return TurnMetrics(
            self.number, context_id, self.first_text_at, self.flushed_at, self.first_audio_at,
            ended_at, self.audio_s, self.audio_frames, cancelled,
        )

    def fold(self, other: _Cycle) -> None:
        """Add ``other``'s audio to this one's (a context's totals); first times are kept."""
        self.audio_s += other.audio_s
        self.audio_frames += other.audio_frames
        if self.first_text_at is None:
            self.first_text_at = other.first_text_at
        if self.flushed_at is None:
            self.flushed_at = other.flushed_at
        if self.first_audio_at is None:
            self.first_audio_at = other.first_audio_at

    def adopt(self, replay: TurnReplay) -> None:
        """Replayed text keeps the times it was first sent at (its latency spans the loss)."""
        first, flushed = replay.first_text_at, replay.flushed_at
        if first is not None and (self.first_text_at is None or first < self.first_text_at):
            self.first_text_at = first
        if flushed is not None and self.flushed_at is not None and flushed < self.flushed_at:
            self.flushed_at = flushed

    def replay(
        self, flushed: bool, context_id: str | None = None, options: dict[str, Any] | None = None
    ) -> TurnReplay:
        text = self.text
        delivered = self.audio_frames > 0
        return TurnReplay(
            turn=self.number,
            text=text,
            flushed=flushed,
            replayable=not delivered,
            unspoken_text=unspoken_text(text, self.spoken) if delivered else text,
            context_id=context_id,
            first_text_at=self.first_text_at,
            flushed_at=self.flushed_at,
            options={} if options is None else options,
        )


@dataclass(slots=True)
class _PendingCancel:
    """A cancel waiting for ``interrupted``; output before the ack belongs to cancelled work."""

    sent_at: float
    turns: list[Any]  # _Turn / _Request / (_Context, cycle number, its _Cycle)
    context_ids: frozenset[str] | None = None  # multi: which contexts; None = all
    sent_before: int = 0  # tts: requests numbered below this were sent before the cancel
    reported: bool = False  # tts: an Interrupted was already emitted for this cancel
    #: No ``interrupted`` came within the quiet timeout: the cancel is abandoned. The
    #: application was told (``Interrupted(acknowledged=False)``), output flows to later work
    #: again, and a late ``interrupted`` is matched to it and dropped.
    timed_out: bool = False
    #: stream: frames were dropped for this cancel while turns up to this number, sent after
    #: it, were waiting; their output may be among them (see ``_abandon``).
    tainted: int = -1


class _ClientSession:
    """Outbox, events, cancel acknowledgement and error handling shared by all endpoints.

    What a transport needs to know about the endpoint lives here, so a transport need not
    switch on it: :meth:`work_key` names the piece of work an event belongs to (a turn, a
    request, a context; ``event.ends_work`` says whether it is the work's last event),
    :meth:`cancel` returns the keys of the work it cancelled, and :meth:`replay` sends work
    lost to a restart again on a fresh session.
    """

    endpoint = ""
    #: The event attribute that names the piece of work an event belongs to.
    work_key_attr: ClassVar[str] = "turn"
    #: Whether one piece of work runs through several flush-cycles (a multi context): then an
    #: ``Interrupted`` or a cancel ends a cycle, not the work.
    work_has_cycles: ClassVar[bool] = False
    #: Frames handled by the session as a whole, by frame type.
    _frame_handlers: ClassVar[dict[type[Any], _Handler]] = {}
    #: Output frames (``DELIVER``), by frame type.
    _outputs: ClassVar[dict[type[Any], _Output]] = {}
    #: The endpoint's state table (``(state, input) -> (action, next state)``), the
    #: implementation of each of its actions, and its local inputs (set per endpoint below).
    _table: ClassVar[Mapping[tuple[Any, Any], tuple[ClientAction | None, Any]]] = {}
    _actions: ClassVar[dict[ClientAction, _Action]] = {}
    _local_inputs: ClassVar[frozenset[Any]] = frozenset()
    _connection_lost: ClassVar[Any] = None  # the table's input for the connection's loss

    def __init__(
        self, config: Config | None = None, config_fields: dict[str, Any] | None = None, *,
        cancel_timeout: float = 5.0,
    ) -> None:
        if cancel_timeout <= 0:
            raise LocalProtocolError("cancel_timeout must be positive")
        base = config or Config()
        self._config = base.merged(Config.build(**config_fields)) if config_fields else base
        #: the config travels on the next frame that carries it (see update_config)
        self._send_config = True
        self._outbox: list[str] = []
        self._outbox_size = 0
        self._events: deque[ClientEvent] = deque()
        self._pending_cancels: deque[_PendingCancel] = deque()
        self._cancel_timeout = cancel_timeout
        self._last_rx = -_INF
        self._now = -_INF  # the latest ``now`` of handle_timeout / connection_lost
        self._settings_pending = 0
        self._terminated: ConnectionTerminated | None = None
        self._closing = False
        #: Frames dropped because they belonged to cancelled/closed work or to nothing.
        self.dropped_frames = 0
        #: Frames with no known key (forward compatibility), ignored.
        self.unknown_frames = 0

    # -- the MessageSession protocol -------------------------------------------------------
    @property
    def close_code(self) -> int | None:
        return None  # the client never asks the transport to close on its own

    def messages_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        self._outbox_size = 0
        return out

    @property
    def unsent_size(self) -> int:
        """Characters of the messages queued and not yet taken by :meth:`messages_to_send`
        (for a transport's high-water mark)."""
        return self._outbox_size

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[ClientEvent]:
        while self._events:
            yield self._events.popleft()

    def receive_message(self, text: str, now: float) -> None:
        """Feed one complete text message from the server. Raises RemoteProtocolError."""
        msg = parse_server_message(text)
        self._last_rx = now
        if self._terminated is not None:
            self.dropped_frames += 1
            return
        self._dispatch(msg, now)

    def next_deadline(self) -> float | None:
        deadline = self._cancel_deadline()
        other = self._other_deadline()
        if other is not None and (deadline is None or other < deadline):
            deadline = other
        return deadline

    def handle_timeout(self, now: float) -> None:
        self._now = now
        while (deadline := self._cancel_deadline()) is not None and now >= deadline:
            pending = next(p for p in self._pending_cancels if not p.timed_out)
            pending.timed_out = True
            self._finish_cancel(pending, acknowledged=False)
            self._events.append(
                Diagnostic(
                    f"no 'interrupted' within {self._cancel_timeout:g} s of a cancel; the "
                    "cancelled work is abandoned and later output flows again"
                )
            )
            self._abandon(pending)
            pending.turns = []  # nothing of it is needed to match a late ack
            abandoned = [p for p in self._pending_cancels if p.timed_out]
            if len(abandoned) > _MAX_ABANDONED:  # a server that never acknowledges
                self._pending_cancels.remove(abandoned[0])
        self._other_timeout(now)

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        if self._terminated is not None:
            return
        self._now = now
        while self._pending_cancels:
            pending = self._pending_cancels.popleft()
            if not pending.timed_out:
                self._finish_cancel(pending, acknowledged=False)
        replay = tuple(self._abort_all(code))
        self._terminated = ConnectionTerminated(code, reason, code in RESTART_CODES, replay)
        self._events.append(self._terminated)

    @property
    def terminated(self) -> bool:
        return self._terminated is not None

    def work_key(self, event: object) -> WorkKey | None:
        """The turn number, request number or context id an event (or a
        :class:`TurnReplay`) belongs to; None: no piece of work."""
        key: WorkKey | None = getattr(event, self.work_key_attr, None)
        return key

    def cancel(self, now: float) -> tuple[WorkKey, ...]:
        """Cancel the work in progress; the keys (:meth:`work_key`) of the work cancelled."""
        raise NotImplementedError

    def replay(self, replay: TurnReplay, now: float) -> WorkKey | None:
        """Send work lost to a restart again (on a fresh session); its new work key."""
        raise NotImplementedError

    # -- config -----------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    def update_config(self, **fields: Any) -> None:
        """Change the session's config. It travels on the next frame that carries config (and
        applies from then): the next turn's first frame (stream), the next context creation
        (multi), the next request (tts)."""
        self._config = self._config.merged(Config.build(**fields))
        self._send_config = True

    # -- shared commands --------------------------------------------------------------------
    def update_settings(self, now: float, **settings: Any) -> None:
        """Queue ``update_settings`` (only the six updatable keys; others: LocalProtocolError)."""
        self._check_usable()
        update = SettingsUpdate.build(**settings)
        self._settings_pending += 1
        self._send({"update_settings": update.to_dict()})

    # -- internals ----------------------------------------------------------------------------
    def _send(self, obj: dict[str, Any]) -> None:
        self._send_json(dumps(obj))

    def _send_json(self, text: str) -> None:
        self._outbox.append(text)
        self._outbox_size += len(text)

    def _time(self) -> float:
        """The latest ``now`` the session was given by the server side (a receive, a timeout,
        the connection's loss): when an event emitted outside ``_dispatch`` happened."""
        return max(self._last_rx, self._now)

    def _check_usable(self) -> None:
        if self._terminated is not None:
            raise LocalProtocolError("the connection is closed")
        if self._closing:
            raise LocalProtocolError("close_socket() was sent; the session takes no more input")

    def _cancel_gates(self) -> bool:
        """Whether output is held back for a cancel still waiting for its ``interrupted``."""
        return any(not p.timed_out for p in self._pending_cancels)

    def _abandon(self, pending: _PendingCancel) -> None:
        """A cancel timed out (after its Interrupted events): endpoint-specific cleanup."""

    def _cancel_deadline(self) -> float | None:
        if not self._pending_cancels:
            return None
        pending = next((p for p in self._pending_cancels if not p.timed_out), None)
        if pending is None:
            return None
        # A quiet timer: it restarts on every frame received (protocol.md#barge-in).
        return max(pending.sent_at, self._last_rx) + self._cancel_timeout

    def _other_deadline(self) -> float | None:
        return None

    def _other_timeout(self, now: float) -> None:
        return None

    def _on_interrupted(self, msg: InterruptedFrame, now: float) -> None:
        if self._pending_cancels:
            pending = self._pending_cancels[0]
            if msg.context_id is not None:
                for p in self._pending_cancels:
                    if p.context_ids is not None and msg.context_id in p.context_ids:
                        pending = p
                        break
            self._pending_cancels.remove(pending)
            if pending.timed_out:
                self.dropped_frames += 1  # the late ack of an abandoned cancel
                self._late_ack(pending)
            else:
                self._finish_cancel(pending, acknowledged=True)
        else:
            self.dropped_frames += 1

    def _late_ack(self, pending: _PendingCancel) -> None:
        """The ``interrupted`` of a cancel already reported as timed out: nothing to tell."""

    def _on_settings(self, msg: SettingsUpdatedFrame, now: float) -> None:
        self._settings_pending = max(0, self._settings_pending - 1)
        self._events.append(SettingsUpdated(dict(msg.settings)))

    def _server_error(
        self, msg: ErrorFrame, turn: int | None, *, ends_work: bool = False
    ) -> ServerError:
        code = ErrorCode.parse(msg.error_code)
        return ServerError(
            error_code=code,
            message=msg.error,
            status=msg.code,
            raw_code=msg.error_code,
            context_id=msg.context_id,
            turn=turn,
            request_id=msg.request_id,
            retry_after=msg.retry_after,
            fatal=code in FATAL_CODES,
            ends_work=ends_work,
        )

    def _is_settings_error(self, msg: ErrorFrame) -> bool:
        """A rejected ``update_settings``: surfaced, but it ends no turn or request."""
        if self._settings_pending and msg.error.startswith("Invalid settings update"):
            self._settings_pending -= 1
            self._events.append(self._server_error(msg, None))
            return True
        return False

    def _spell_check(
        self, cycle: _Cycle, text: str, config: Config, context_id: str | None
    ) -> None:
        """Say once per turn/context when <spell> is sent without its settings
        (rulings.md#ruling-20)."""
        if cycle.spell_checked:
            return
        window = cycle.spell_tail + text
        cycle.spell_tail = window[-6:]
        if "<spell" not in window:
            return
        cycle.spell_checked = True
        if config.normalize is False or config.language is None:
            self._events.append(
                Diagnostic(
                    "<spell> sent while normalize is false or language is unset; the hosted "
                    "service requires normalize=true and an explicit language for spelling",
                    turn=cycle.number,
                    context_id=context_id,
                )
            )

    def _repeated_audio(
        self, cycle: _Cycle, msg: AudioFrame, context_id: str | None = None
    ) -> None:
        """An audio frame whose ``idx`` repeats (or goes back) within its chunk: dropped and
        counted, never delivered twice; said once per turn with a :class:`Diagnostic`."""
        self.dropped_frames += 1
        if cycle.duplicates == 1:
            self._events.append(
                Diagnostic(
                    f"audio frame idx {msg.idx} repeated (or out of order) in chunk "
                    f"{msg.chunk_id} of turn {cycle.number}; dropped, not delivered twice",
                    turn=cycle.number,
                    context_id=context_id,
                )
            )

    def _step(
        self, work: Any, event: Any, arg: Any = None, now: float = 0.0, what: str = ""
    ) -> bool:
        """Apply ``event`` to ``work`` (a turn, context or request) by the table: move to the
        next state, then run the transition's action. A pair not in the table is a
        LocalProtocolError for a local input; a remote one is dropped and counted (False)."""
        entry = self._table.get((work.state, event))
        if entry is None:
            if event in self._local_inputs:
                raise LocalProtocolError(
                    f"cannot {what or event.value} {work.label} in state {work.state.value}"
                )
            self.dropped_frames += 1
            return False
        action, work.state = entry
        if action is not None:
            self._actions[action](self, work, arg, now)
        return True

    # -- output: one event per output frame, by frame type (all endpoints) ------------------
    def _deliver(self, cycle: _Cycle, msg: Any, now: float, context_id: str | None = None) -> None:
        self._outputs[type(msg)](self, cycle, msg, now, context_id)

    def _audio(
        self, cycle: _Cycle, msg: AudioFrame, now: float, context_id: str | None = None
    ) -> None:
        offset = cycle.on_audio(msg, now)
        if offset is None:
            self._repeated_audio(cycle, msg, context_id)
        else:
            self._events.append(_audio_chunk(cycle.number, msg, offset, context_id))

    def _generation_started(
        self, cycle: _Cycle, msg: GenerationStartedFrame, now: float, context_id: str | None
    ) -> None:
        cycle.on_generation_started(msg)
        self._events.append(
            _new_generation_started(cycle.number, msg.chunk_id, msg.text, context_id)
        )

    def _word_timestamps(
        self, cycle: _Cycle, msg: WordTimestampsFrame, now: float, context_id: str | None
    ) -> None:
        offset = cycle.words_offset_ms(msg)
        self._events.append(
            WordTimestamps(cycle.number, msg.chunk_id, msg.words, offset, context_id)
        )

    def _chunk_complete(
        self, cycle: _Cycle, msg: ChunkCompleteFrame, now: float, context_id: str | None
    ) -> None:
        cycle.on_chunk_complete(msg)
        self._events.append(
            ChunkComplete(cycle.number, msg.chunk_id, msg.audio_seconds, msg.gen_ms, context_id)
        )

    # -- actions shared by turns and requests (INTERRUPT, ABANDON, ABORT) ---------------------
    def _interrupted(self, work: _Numbered, arg: None, now: float) -> None:
        metrics = work.cycle.metrics(self._time(), cancelled=True)
        self._events.append(Interrupted(work.number, metrics=metrics))

    def _unacknowledged(self, work: _Numbered, arg: None, now: float) -> None:
        metrics = work.cycle.metrics(self._time(), cancelled=True)
        self._events.append(Interrupted(work.number, acknowledged=False, metrics=metrics))

    def _abort(self, work: Any, lost: tuple[int | None, list[TurnReplay]], now: float) -> None:
        code, replays = lost
        replay = work.replay()
        self._events.append(
            TurnAborted(
                work.number, code, not replay.replayable, replay.unspoken_text, work.context_id,
                work.cycle.metrics(self._time(), work.context_id),
            )
        )
        replays.append(replay)

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        raise NotImplementedError

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        raise NotImplementedError

    def _unfinished(self) -> list[Any]:
        """The work the connection's loss ends (taken off the session's queues)."""
        raise NotImplementedError

    def _abort_all(self, code: int | None) -> list[TurnReplay]:
        """CONNECTION_LOST for every unfinished piece of work; the replays of those it aborts."""
        replays: list[TurnReplay] = []
        for work in self._unfinished():
            self._step(work, self._connection_lost, (code, replays))
        return replays


def _speaking(
    table: Mapping[tuple[Any, Any], tuple[ClientAction | None, Any]], output: Any
) -> frozenset[Any]:
    """The states in which ``table`` delivers output and keeps the state: an audio frame in
    one of them is delivered by a session's hot path without a step (the same result)."""
    return frozenset(
        state
        for (state, event), (action, new) in table.items()
        if event is output and action is ClientAction.DELIVER and new is state
    )


def _machine(
    cls: type[_ClientSession],
    table: Mapping[tuple[Any, Any], tuple[ClientAction | None, Any]],
    actions: dict[ClientAction, _Action],
    local_inputs: frozenset[Any],
    connection_lost: Any,
    frame_handlers: dict[type[Any], _Handler],
) -> None:
    """Give a session class its state table, the table's actions, and its frame handlers."""
    cls._table, cls._actions, cls._local_inputs = table, actions, local_inputs
    cls._connection_lost, cls._frame_handlers = connection_lost, frame_handlers


_OUTPUTS: dict[type[Any], _Output] = {
    AudioFrame: _ClientSession._audio,
    GenerationStartedFrame: _ClientSession._generation_started,
    WordTimestampsFrame: _ClientSession._word_timestamps,
    ChunkCompleteFrame: _ClientSession._chunk_complete,
}
_ClientSession._outputs = _OUTPUTS


# =============================================================================================
# /ws/tts/stream


class _Numbered:
    """A turn or a request: named by its cycle's number."""

    __slots__ = ()
    cycle: _Cycle
    noun: ClassVar[str] = ""
    context_id: ClassVar[None] = None

    @property
    def number(self) -> int:
        return self.cycle.number

    @property
    def label(self) -> str:
        return f"{self.noun} {self.cycle.number}"


@dataclass(slots=True)
class _Turn(_Numbered):
    noun = "turn"
    cycle: _Cycle
    state: ClientTurnState = ClientTurnState.OPEN
    last_text_at: float = -_INF
    flushed: bool = False

    def replay(self) -> TurnReplay:
        return self.cycle.replay(self.flushed)


class StreamClientSession(_ClientSession):
    """Client role of ``/ws/tts/stream``: turns of streamed text, audio back.

    * Config is sticky: it is merged into the first frame of the first turn and re-sent on the
      first frame after a change, a ``cancel`` or a ``close`` (as the official SDK does).
    * ``send_text`` never flushes; ``flush()`` ends the turn (exactly once: a second flush of
      the same turn is a :class:`LocalProtocolError`); text sent after a flush starts the next
      turn.
    * ``cancel()``: from that moment no audio of the cancelled turn(s) is delivered;
      :class:`Interrupted` is their terminal event.
    * ``idle_flush_guard``: the server ends a turn after 5 s without text
      (rulings.md#ruling-5). To keep turn matching deterministic the client flushes such a
      turn itself after this many seconds (default 4.5) and says so with a
      :class:`Diagnostic`; ``None`` disables it.
    """

    endpoint = STREAM_ENDPOINT

    def __init__(
        self,
        config: Config | None = None,
        *,
        cancel_timeout: float = 5.0,
        idle_flush_guard: float | None = 4.5,
        **config_fields: Any,
    ) -> None:
        super().__init__(config, config_fields, cancel_timeout=cancel_timeout)
        self._turns: deque[_Turn] = deque()
        self._next_turn = 0
        self._idle_guard = idle_flush_guard

    # -- commands -----------------------------------------------------------------------------
    @property
    def current_turn(self) -> int | None:
        """The turn that text sent now would extend, if one is open."""
        turn = self._open_turn()
        return None if turn is None else turn.number

    def send_text(self, text: str, now: float, *, flush: bool = False) -> int | None:
        """Queue a text fragment (an LLM token). Returns its turn number.

        Empty text is not sent (it never starts a turn, rulings.md#ruling-6); with ``flush=True`` it
        flushes the open turn.
        """
        self._check_usable()
        if not isinstance(text, str):
            raise LocalProtocolError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return self.flush(now) if flush else None
        turn = self._open_turn()
        config: dict[str, Any] | None = None
        if turn is None:
            turn = _Turn(_Cycle(self._next_turn, first_text_at=now))
            self._next_turn += 1
            self._turns.append(turn)
            self._events.append(_new_turn_started(turn.number))
            if self._send_config:
                config = self._config.to_dict()
                self._send_config = False
        self._step(turn, TurnInput.SEND_TEXT)
        turn.cycle.parts.append(text)
        turn.last_text_at = now
        self._spell_check(turn.cycle, text, self._config, None)
        if flush:
            self._step(turn, TurnInput.FLUSH, None, now)
        if config is None:  # a token, or the flush of a turn (the hot path): dumps(), by hand
            self._send_json(
                '{"text":' + _json_string(text) + (',"flush":true}' if flush else "}")
            )
        else:
            msg: dict[str, Any] = {"text": text, **config}
            if flush:
                msg["flush"] = True
            self._send(msg)
        return turn.number

    def flush(self, now: float) -> int:
        """End the open turn. Raises LocalProtocolError if it was flushed already / none open."""
        self._check_usable()
        turn = self._open_turn()
        if turn is None:
            last = self._turns[-1] if self._turns else None
            if last is not None:
                raise LocalProtocolError(
                    f"turn {last.number} was already flushed; flush exactly once per turn"
                )
            raise LocalProtocolError("no open turn to flush: send text first")
        self._step(turn, TurnInput.FLUSH, None, now)
        self._send_json('{"flush":true}')  # dumps({"flush": True})
        return turn.number

    def end_turn(self, now: float) -> int | None:
        """Send ``close`` (alias ``end_session``): graceful end of the open turn, if any."""
        self._check_usable()
        turn = self._open_turn()
        if turn is None:
            return None
        self._step(turn, TurnInput.CLOSE, None, now)
        self._send_config = True
        self._send({"close": True})
        return turn.number

    def cancel(self, now: float) -> tuple[int, ...]:
        """Barge-in: abandon every unfinished turn. No audio of them is delivered after this."""
        self._check_usable()
        cancelled = list(self._turns)
        for turn in cancelled:
            self._step(turn, TurnInput.CANCEL)
        self._turns.clear()
        self._pending_cancels.append(_PendingCancel(now, cancelled))
        self._send_config = True
        self._send({"cancel": True})
        return tuple(t.number for t in cancelled)

    def close_socket(self, now: float) -> None:
        """Ask the server to finish (drain) and close the connection."""
        self._check_usable()
        self._closing = True
        self._send({"close_socket": True})

    def replay(self, replay: TurnReplay, now: float) -> int | None:
        """Re-send a turn lost to a restart close (on a fresh session/connection)."""
        number = self.send_text(replay.text, now, flush=replay.flushed)
        if number is not None:
            self._turns[-1].cycle.adopt(replay)
        return number

    # -- timers -------------------------------------------------------------------------------
    def _other_deadline(self) -> float | None:
        # Same conditions as _other_timeout: a deadline it would not act on is never reported.
        if self._idle_guard is None or self._terminated is not None or self._closing:
            return None
        turn = self._open_turn()
        return None if turn is None else turn.last_text_at + self._idle_guard

    def _other_timeout(self, now: float) -> None:
        if self._idle_guard is None or self._terminated is not None or self._closing:
            return
        turn = self._open_turn()
        if turn is not None and now >= turn.last_text_at + self._idle_guard:
            self.flush(now)
            self._events.append(
                Diagnostic(
                    f"turn {turn.number} flushed after {self._idle_guard:g} s without text "
                    "(the server ends idle turns after 5 s); flush explicitly to end a turn",
                    turn=turn.number,
                )
            )

    # -- internals ----------------------------------------------------------------------------
    def _open_turn(self) -> _Turn | None:
        if self._turns and self._turns[-1].state in _TAKES_TEXT:
            return self._turns[-1]
        return None

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if type(msg) is AudioFrame and self._turns and not self._pending_cancels:
            # The hot path: audio of the turn being spoken, in a state where the table
            # delivers it and stays (_SPEAKING); the same as _step(OUTPUT) + _audio.
            first = self._turns[0]
            if first.state in _SPEAKING:
                cycle = first.cycle
                offset = cycle.on_audio(msg, now)
                if offset is None:
                    self._repeated_audio(cycle, msg)
                else:
                    self._events.append(_audio_chunk(cycle.number, msg, offset))
                return
        kind = type(msg)
        handler = self._frame_handlers.get(kind)
        if handler is not None:  # interrupted, settings_updated, error
            handler(self, msg, now)
            return
        head = self._turns[0] if self._turns else None
        event = _TURN_INPUTS.get(kind)
        if head is None or (self._pending_cancels and self._cancel_gates()):
            self._hold(msg, head, event)
        elif event is None:
            self.unknown_frames += 1
        elif not self._step(head, event, msg, now) and isinstance(msg, WarningFrame):
            self._events.append(ServerWarning(msg.warning, head.number))  # said even out of turn

    def _hold(self, msg: ServerMessage, head: _Turn | None, event: TurnInput | None) -> None:
        """Output before the ack of a cancel is the cancelled turn's; output with no turn is
        stray. Neither reaches the application."""
        if head is not None:  # held back for a cancel: turns waiting now may lose output
            newest = self._turns[-1].number
            for p in self._pending_cancels:
                if not p.timed_out:
                    p.tainted = newest
        if event is None:
            self.unknown_frames += 1
        elif head is None and isinstance(msg, WarningFrame):
            self._events.append(ServerWarning(msg.warning))
        else:
            self.dropped_frames += 1

    def _on_error(self, msg: ErrorFrame, now: float) -> None:
        if self._is_settings_error(msg):
            return
        head = self._turns[0] if self._turns else None
        event = self._server_error(msg, None if head is None else head.number)
        refused = (
            head is not None
            and self._refusable(head, msg)
            and self._step(head, TurnInput.REFUSED, event, now)  # REFUSE says it (ends_turn)
        )
        if not refused:
            self._events.append(event)

    def _refusable(self, head: _Turn, msg: ErrorFrame) -> bool:
        """Could ``msg`` refuse the head turn? A voice error before any of its output: the
        server dropped the turn's text, so no ``final`` follows (REFUSED ends it)."""
        cycle = head.cycle
        return (
            msg.error_code in _REFUSALS
            and not self._pending_cancels
            and not cycle.audio_frames
            and not cycle.chunk_texts
        )

    # -- the turn table's actions ---------------------------------------------------------------
    def _mark_flushed(self, turn: _Turn, arg: None, now: float) -> None:
        turn.flushed = True
        turn.cycle.flushed_at = now

    def _deliver_output(self, turn: _Turn, msg: ServerMessage, now: float) -> None:
        self._deliver(turn.cycle, msg, now)

    def _warn(self, turn: _Turn, msg: WarningFrame, now: float) -> None:
        self._events.append(ServerWarning(msg.warning, turn.number))

    def _final(self, turn: _Turn, msg: FinalFrame, now: float) -> None:
        self._events.append(
            TurnFinal(
                turn.number, msg.total_audio_seconds, msg.total_text_chunks,
                msg.total_audio_chunks,
            )
        )

    def _close(self, turn: _Turn, msg: SessionClosedFrame, now: float) -> None:
        self._turns.popleft()
        self._events.append(
            TurnClosed(
                turn.number, msg.usage, msg.total_audio_seconds, msg.total_text_chunks,
                msg.total_audio_chunks, turn.cycle.metrics(now),
            )
        )

    def _refuse(self, turn: _Turn, event: ServerError, now: float) -> None:
        self._turns.popleft()
        self._send_config = True  # the next turn states its voice again
        self._events.append(replace(event, ends_turn=True, ends_work=True))

    # -- cancel and connection loss ---------------------------------------------------------------
    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        event = TurnInput.INTERRUPTED if acknowledged else TurnInput.CANCEL_TIMEOUT
        for turn in pending.turns:
            self._step(turn, event)

    def _abandon(self, pending: _PendingCancel) -> None:
        """Turns sent after the abandoned cancel whose output may have been dropped with the
        cancelled turn's (frames were dropped while they waited) cannot be matched any more:
        they end too, with ``Interrupted(acknowledged=False)``, rather than wait forever."""
        if pending.tainted < 0 or self._cancel_gates():
            return
        while self._turns and self._turns[0].number <= pending.tainted:
            turn = self._turns.popleft()
            self._step(turn, TurnInput.CANCEL)
            self._step(turn, TurnInput.CANCEL_TIMEOUT)
            self._send_config = True
            self._events.append(
                Diagnostic(
                    f"turn {turn.number} ended: its output may have been dropped with the "
                    "unacknowledged cancel's",
                    turn=turn.number,
                )
            )

    def _unfinished(self) -> list[Any]:
        turns = list(self._turns)
        self._turns.clear()
        return turns


_A = ClientAction
_TURN_ACTIONS: dict[ClientAction, _Action] = {
    _A.MARK_FLUSHED: StreamClientSession._mark_flushed,
    _A.DELIVER: StreamClientSession._deliver_output,
    _A.WARN: StreamClientSession._warn,
    _A.FINAL: StreamClientSession._final,
    _A.CLOSE: StreamClientSession._close,
    _A.REFUSE: StreamClientSession._refuse,
    _A.INTERRUPT: _ClientSession._interrupted,
    _A.ABANDON: _ClientSession._unacknowledged,
    _A.ABORT: _ClientSession._abort,
}
#: The turn's input for each server frame that belongs to the oldest unfinished turn.
_TURN_INPUTS: dict[type[Any], TurnInput] = {
    AudioFrame: TurnInput.OUTPUT,
    GenerationStartedFrame: TurnInput.OUTPUT,
    WordTimestampsFrame: TurnInput.OUTPUT,
    ChunkCompleteFrame: TurnInput.OUTPUT,
    WarningFrame: TurnInput.IDLE_WARNING,
    FinalFrame: TurnInput.FINAL,
    SessionClosedFrame: TurnInput.SESSION_CLOSED,
}
#: Turn states that take more text (the open turn), by the table.
_TAKES_TEXT = frozenset(state for state, event in CLIENT_TURN_TABLE if event is TurnInput.SEND_TEXT)
#: Turn states in which the table delivers output and keeps the state (the audio hot path).
_SPEAKING = _speaking(CLIENT_TURN_TABLE, TurnInput.OUTPUT)
_machine(
    StreamClientSession, CLIENT_TURN_TABLE, _TURN_ACTIONS,
    LOCAL_TURN_INPUTS, TurnInput.CONNECTION_LOST,
    {
        InterruptedFrame: StreamClientSession._on_interrupted,
        SettingsUpdatedFrame: StreamClientSession._on_settings,
        ErrorFrame: StreamClientSession._on_error,
    },
)


# =============================================================================================
# /ws/tts/multi


@dataclass(slots=True)
class _Context:
    context_id: str
    cycle: _Cycle
    state: ClientContextState = ClientContextState.CREATING
    last_sent_at: float = -_INF
    flush_marks: list[int] = field(default_factory=list)  # len(cycle.parts) at each flush
    announced: bool = True  # TurnStarted emitted for the current cycle
    #: Per flush mark: when it was sent, and when the first text after it was (the times of
    #: the cycles still to come); ``totals``: the audio of the context's finished cycles.
    flush_times: list[float] = field(default_factory=list)
    text_times: list[float | None] = field(default_factory=list)
    totals: _Cycle = field(default_factory=lambda: _Cycle(0))
    #: What create_context() was given (a replay creates the context the same way).
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.cycle.number

    @property
    def label(self) -> str:
        return f"context {self.context_id!r}"

    def replay(self) -> TurnReplay:
        return self.cycle.replay(bool(self.flush_marks), self.context_id, self.options)

    def text_sent(self, now: float) -> None:
        """Text went out: the first text of the current cycle, or of one still to come."""
        times = self.text_times
        if times:
            if times[-1] is None:
                times[-1] = now
        elif self.cycle.first_text_at is None:
            self.cycle.first_text_at = now

    def mark_flush(self, now: float) -> None:
        if not self.flush_marks:
            self.cycle.flushed_at = now
        self.flush_marks.append(len(self.cycle.parts))
        self.flush_times.append(now)
        self.text_times.append(None)


class MultiClientSession(_ClientSession):
    """Client role of ``/ws/tts/multi``: up to 20 contexts over one socket.

    Events carry ``context_id``; ``turn`` is the context's flush-cycle number (0-based; a
    ``final`` or a cancel ends a cycle). Frames for closed, cancelled or immediately-closed
    contexts are dropped and counted, never delivered elsewhere. ``keepalive_interval`` (off by
    default) sends ``{"text": "", "context_id"}`` for contexts quiet that long, so they outlive
    the server's inactivity timeout.
    """

    endpoint = MULTI_ENDPOINT
    work_key_attr = "context_id"
    work_has_cycles = True

    def __init__(
        self,
        config: Config | None = None,
        *,
        cancel_timeout: float = 5.0,
        max_contexts: int = MAX_CONTEXTS,
        keepalive_interval: float | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__(config, config_fields, cancel_timeout=cancel_timeout)
        self._contexts: dict[str, _Context] = {}
        self._tombstones: set[str] = set()
        self._max_contexts = max_contexts
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise LocalProtocolError("keepalive_interval must be positive")
        self._keepalive = keepalive_interval

    @property
    def open_contexts(self) -> tuple[str, ...]:
        """Contexts that count towards the cap (everything not yet ``context_closed``)."""
        return tuple(self._contexts)

    def context_state(self, context_id: str) -> ClientContextState:
        ctx = self._contexts.get(context_id)
        return ClientContextState.CLOSED if ctx is None else ctx.state

    # -- commands -----------------------------------------------------------------------------
    def create_context(
        self,
        context_id: str,
        now: float,
        *,
        voice_id: int | str | None = None,
        cfg_scale: float | None = None,
        max_new_tokens: int | None = None,
        text: str = " ",
    ) -> None:
        """Send the init frame; the voice is bound from ``voice_settings.voice_id``
        (protocol.md#multi-messages)."""
        self._check_usable()
        if not isinstance(context_id, str) or not context_id or len(context_id) > 256:
            raise LocalProtocolError("context_id must be a non-empty str of at most 256 chars")
        if context_id in self._contexts:
            raise LocalProtocolError(f"context {context_id!r} already exists")
        if len(self._contexts) >= self._max_contexts:
            raise LocalProtocolError(
                f"at most {self._max_contexts} contexts per connection (counting contexts "
                "still closing); close one first"
            )
        from ._config import VoiceSettings

        requested_voice = voice_id
        if voice_id is None:
            # The service binds a context's voice only from voice_settings: a session-wide
            # voice_id alone would leave the context voiceless (MISSING_VOICE_ID).
            voice_id = self._config.voice_id
        vs = VoiceSettings.from_dict(
            {
                k: v
                for k, v in (
                    ("voice_id", voice_id),
                    ("cfg_scale", cfg_scale),
                    ("max_new_tokens", max_new_tokens),
                )
                if v is not None
            },
            LocalProtocolError,
        )
        msg: dict[str, Any] = {"text": text, "context_id": context_id}
        if self._send_config:
            msg.update(self._config.to_dict())
            self._send_config = False
        if vs.to_dict():
            msg["voice_settings"] = vs.to_dict()
        self._tombstones.discard(context_id)
        ctx = _Context(
            context_id, _Cycle(0, first_text_at=now if text.strip() else None), last_sent_at=now
        )
        ctx.options = {
            "voice_id": requested_voice, "cfg_scale": cfg_scale,
            "max_new_tokens": max_new_tokens, "text": text,
        }
        self._contexts[context_id] = ctx
        self._events.append(_new_turn_started(0, context_id))
        self._send(msg)

    def send_text(self, context_id: str, text: str, now: float, *, flush: bool = False) -> int:
        self._check_usable()
        if not isinstance(text, str):
            raise LocalProtocolError(f"text must be a str, got {type(text).__name__}")
        ctx = self._usable_context(context_id, "send text to")
        self._announce(ctx)
        ctx.cycle.parts.append(text)
        self._spell_check(ctx.cycle, text, self._config, context_id)
        msg: dict[str, Any] = {"text": text, "context_id": context_id}
        if text:
            ctx.text_sent(now)
        if flush:
            msg["flush"] = True
            ctx.mark_flush(now)
        ctx.last_sent_at = now
        self._send(msg)
        return ctx.number

    def flush(self, context_id: str, now: float) -> int:
        self._check_usable()
        ctx = self._usable_context(context_id, "flush")
        self._announce(ctx)
        ctx.mark_flush(now)
        ctx.last_sent_at = now
        self._send({"flush": True, "context_id": context_id})
        return ctx.number

    def keep_alive(self, context_id: str, now: float) -> None:
        self._check_usable()
        ctx = self._usable_context(context_id, "keep alive")
        ctx.last_sent_at = now
        self._send({"text": "", "context_id": context_id})

    def close_context(self, context_id: str, now: float, *, immediate: bool = False) -> None:
        """Graceful close (``final`` then ``context_closed``) or immediate (barge-in)."""
        self._check_usable()
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise LocalProtocolError(f"no context {context_id!r}")
        event = ContextInput.CLOSE_IMMEDIATE if immediate else ContextInput.CLOSE
        self._step(ctx, event, None, now)  # a graceful close from OPEN flushes (CLOSE_FLUSH)
        msg: dict[str, Any] = {"close_context": True, "context_id": context_id}
        if immediate:
            msg["immediate"] = True
        self._send(msg)

    def cancel(self, now: float, context_id: str | None = None) -> tuple[str, ...]:
        """``cancel`` one context (or every context still accepting input)."""
        self._check_usable()
        if context_id is not None:
            targets = [self._usable_context(context_id, "cancel")]
        else:
            targets = [c for c in self._contexts.values() if c.state in _ACCEPTING]
        ids = frozenset(c.context_id for c in targets)
        # The cancelled cycles end at the ack; text sent from now on is the next cycle's.
        self._pending_cancels.append(
            _PendingCancel(now, [(c, c.number, c.cycle) for c in targets], ids)
        )
        for ctx in targets:
            ctx.flush_marks.clear()
            ctx.flush_times.clear()
            ctx.text_times.clear()
            ctx.totals.fold(ctx.cycle)
            ctx.cycle = _Cycle(ctx.cycle.number + 1)
            ctx.announced = False
        msg: dict[str, Any] = {"cancel": True}
        if context_id is not None:
            msg["context_id"] = context_id
        self._send(msg)
        return tuple(sorted(ids))

    def close_socket(self, now: float) -> None:
        self._check_usable()
        self._closing = True
        # The server closes every context still open gracefully, which flushes it: each one's
        # current cycle gets a final, so it is started and marked like close_context() does.
        for ctx in self._contexts.values():
            if ctx.state in _ACCEPTING:
                self._announce(ctx)
                ctx.mark_flush(now)
        self._send({"close_socket": True})

    def replay(
        self, replay: TurnReplay, now: float, *, voice_id: int | str | None = None
    ) -> str:
        """Re-create a context lost to a restart close (with the options it was created with;
        ``voice_id`` overrides its voice) and re-send its unspoken text. Returns its id."""
        cid = replay.context_id
        if cid is None:
            raise LocalProtocolError("not a multi-context replay")
        if cid not in self._contexts:
            options = dict(replay.options)
            if voice_id is not None:
                options["voice_id"] = voice_id
            self.create_context(cid, now, **options)
        ctx = self._contexts[cid]
        if replay.text.strip():
            current = not ctx.flush_marks  # the text starts the current cycle
            self.send_text(cid, replay.text, now, flush=replay.flushed)
            if current:
                ctx.cycle.adopt(replay)
        elif replay.flushed:
            self.flush(cid, now)
        return cid

    # -- timers -------------------------------------------------------------------------------
    def _other_deadline(self) -> float | None:
        # Same conditions as _other_timeout: a deadline it would not act on is never reported.
        if self._keepalive is None or self._terminated is not None or self._closing:
            return None
        times = [c.last_sent_at for c in self._contexts.values() if c.state in _ACCEPTING]
        return min(times) + self._keepalive if times else None

    def _other_timeout(self, now: float) -> None:
        if self._keepalive is None or self._terminated is not None or self._closing:
            return
        for ctx in list(self._contexts.values()):
            if ctx.state in _ACCEPTING and now >= ctx.last_sent_at + self._keepalive:
                self.keep_alive(ctx.context_id, now)

    # -- internals ----------------------------------------------------------------------------
    def _usable_context(self, context_id: str, what: str) -> _Context:
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise LocalProtocolError(f"cannot {what} context {context_id!r}: create it first")
        self._step(ctx, ContextInput.SEND, what=what)
        return ctx

    def _step(
        self, work: Any, event: Any, arg: Any = None, now: float = 0.0, what: str = ""
    ) -> bool:
        moved = super()._step(work, event, arg, now, what)
        if moved and work.state is ClientContextState.CLOSED:  # tombstoned
            del self._contexts[work.context_id]
            self._tombstones.add(work.context_id)
        return moved

    def _cancelling(self, context_id: str) -> bool:
        return any(
            not p.timed_out and p.context_ids is not None and context_id in p.context_ids
            for p in self._pending_cancels
        )

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if type(msg) is AudioFrame:
            # The hot path: audio of a context in a state where the table delivers it and
            # stays (_CONTEXT_SPEAKING), not cancelled; the same as _step(OUTPUT) + _audio.
            ctx = self._contexts.get(msg.context_id)  # type: ignore[arg-type]
            if (
                ctx is not None
                and ctx.state in _CONTEXT_SPEAKING
                and not (self._pending_cancels and self._cancelling(ctx.context_id))
            ):
                self._audio(ctx.cycle, msg, now, ctx.context_id)
                return
        kind = type(msg)
        handler = self._frame_handlers.get(kind)
        if handler is not None:  # interrupted, settings_updated, session_closed, error, warning
            handler(self, msg, now)
            return
        event = _CONTEXT_INPUTS.get(kind)
        context_id = getattr(msg, "context_id", None)
        ctx = None if context_id is None else self._contexts.get(context_id)
        if ctx is None or event is None:
            if event is None:
                self.unknown_frames += 1
            else:
                self.dropped_frames += 1  # tombstoned or unknown context
        elif event is ContextInput.OUTPUT and self._cancelling(ctx.context_id):
            self.dropped_frames += 1  # output of a cancelled cycle, before its ack
        else:
            self._step(ctx, event, msg, now)

    def _on_session_closed(self, msg: SessionClosedFrame, now: float) -> None:
        self._events.append(SessionClosed(msg.total_audio_seconds))

    def _on_warning(self, msg: WarningFrame, now: float) -> None:
        self._events.append(ServerWarning(msg.warning, None, msg.context_id))

    # -- the context table's actions ------------------------------------------------------------
    def _created(self, ctx: _Context, msg: ContextCreatedFrame, now: float) -> None:
        self._events.append(ContextCreated(ctx.context_id))

    def _timed_out(self, ctx: _Context, msg: ContextTimeoutFrame, now: float) -> None:
        self._events.append(ContextTimeout(ctx.context_id))

    def _context_closed(self, ctx: _Context, msg: ContextClosedFrame, now: float) -> None:
        metrics = self._context_metrics(ctx, now, False)
        self._events.append(ContextClosed(ctx.context_id, msg.usage, metrics))

    def _closed_immediate(self, ctx: _Context, msg: ContextClosedFrame, now: float) -> None:
        metrics = self._context_metrics(ctx, now, True)
        self._events.append(ContextClosed(ctx.context_id, msg.usage, metrics))

    def _close_flush(self, ctx: _Context, arg: None, now: float) -> None:
        """A graceful close flushes: the server sends a final first."""
        self._announce(ctx)
        ctx.mark_flush(now)

    def _deliver_output(self, ctx: _Context, msg: ServerMessage, now: float) -> None:
        if type(msg) is FinalFrame:
            cid = ctx.context_id
            self._events.append(
                TurnFinal(
                    ctx.number, msg.total_audio_seconds, msg.total_text_chunks,
                    msg.total_audio_chunks, cid, ctx.cycle.metrics(now, cid),
                )
            )
            self._new_cycle(ctx)
        else:
            self._deliver(ctx.cycle, msg, now, ctx.context_id)

    def _discard(self, ctx: _Context, arg: Any, now: float) -> None:
        """Gone without an event of its own (the move tombstoned it)."""

    def _announce(self, ctx: _Context) -> None:
        if not ctx.announced:
            ctx.announced = True
            self._events.append(_new_turn_started(ctx.number, ctx.context_id))

    def _new_cycle(self, ctx: _Context) -> None:
        """A ``final`` ended the oldest flush: text sent after that flush carries over."""
        parts = ctx.cycle.parts
        ctx.totals.fold(ctx.cycle)
        mark = ctx.flush_marks.pop(0) if ctx.flush_marks else len(parts)
        ctx.flush_marks = [m - mark for m in ctx.flush_marks]
        ctx.cycle = _Cycle(ctx.cycle.number + 1, parts=parts[mark:])
        if ctx.flush_times:  # the next cycle's times, kept since they were sent
            ctx.flush_times.pop(0)
            ctx.cycle.first_text_at = ctx.text_times.pop(0)
            ctx.cycle.flushed_at = ctx.flush_times[0] if ctx.flush_times else None
        ctx.announced = False
        if ctx.cycle.parts or ctx.flush_marks:
            self._announce(ctx)

    def _context_metrics(self, ctx: _Context, now: float, immediate: bool) -> TurnMetrics:
        """The whole context's figures at its ``context_closed``."""
        totals = ctx.totals
        totals.fold(ctx.cycle)
        return TurnMetrics(
            ctx.number, ctx.context_id, totals.first_text_at, totals.flushed_at,
            totals.first_audio_at, now, totals.audio_s, totals.audio_frames, immediate,
        )

    def _on_error(self, msg: ErrorFrame, now: float) -> None:
        if self._is_settings_error(msg):
            return
        ctx = None if msg.context_id is None else self._contexts.get(msg.context_id)
        rejected = ErrorCode.parse(msg.error_code) is ErrorCode.TOO_MANY_CONTEXTS
        event = self._server_error(msg, None if ctx is None else ctx.number, ends_work=rejected)
        self._events.append(event)
        if ctx is not None and rejected:
            self._step(ctx, ContextInput.REJECTED)

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        for ctx, number, cycle in pending.turns:
            metrics = cycle.metrics(self._time(), ctx.context_id, cancelled=True)
            self._events.append(Interrupted(number, ctx.context_id, acknowledged, metrics))

    def _unfinished(self) -> list[Any]:
        return list(self._contexts.values())


_CONTEXT_ACTIONS: dict[ClientAction, _Action] = {
    _A.CLOSE_FLUSH: MultiClientSession._close_flush,
    _A.CREATED: MultiClientSession._created,
    _A.DELIVER: MultiClientSession._deliver_output,
    _A.TIMED_OUT: MultiClientSession._timed_out,
    _A.CONTEXT_CLOSED: MultiClientSession._context_closed,
    _A.CLOSED_IMMEDIATE: MultiClientSession._closed_immediate,
    _A.DISCARD: MultiClientSession._discard,
    _A.ABORT: _ClientSession._abort,
}
#: The context's input for each server frame that names a context.
_CONTEXT_INPUTS: dict[type[Any], ContextInput] = {
    ContextCreatedFrame: ContextInput.CREATED,
    ContextClosedFrame: ContextInput.CLOSED,
    ContextTimeoutFrame: ContextInput.TIMEOUT,
    AudioFrame: ContextInput.OUTPUT,
    GenerationStartedFrame: ContextInput.OUTPUT,
    WordTimestampsFrame: ContextInput.OUTPUT,
    ChunkCompleteFrame: ContextInput.OUTPUT,
    FinalFrame: ContextInput.OUTPUT,
}
#: Context states in which the table delivers output and keeps the state (the audio hot path).
_CONTEXT_SPEAKING = _speaking(CLIENT_CONTEXT_TABLE, ContextInput.OUTPUT)
#: Context states that accept input (text, flush, keep-alive, cancel), by the table.
_ACCEPTING = frozenset(state for state, event in CLIENT_CONTEXT_TABLE if event is ContextInput.SEND)
_machine(
    MultiClientSession, CLIENT_CONTEXT_TABLE, _CONTEXT_ACTIONS,
    LOCAL_CONTEXT_INPUTS, ContextInput.CONNECTION_LOST,
    {
        InterruptedFrame: MultiClientSession._on_interrupted,
        SettingsUpdatedFrame: MultiClientSession._on_settings,
        SessionClosedFrame: MultiClientSession._on_session_closed,
        ErrorFrame: MultiClientSession._on_error,
        WarningFrame: MultiClientSession._on_warning,
    },
)


# =============================================================================================
# /ws/tts


@dataclass(slots=True)
class _Request(_Numbered):
    noun = "request"
    cycle: _Cycle
    state: ClientRequestState = ClientRequestState.PENDING
    params: dict[str, Any] = field(default_factory=dict)  # request()'s overrides (for replay)

    def replay(self) -> TurnReplay:
        return self.cycle.replay(True, None, self.params)


class TTSClientSession(_ClientSession):
    """Client role of ``/ws/tts``: one-shot requests, queued in order on one socket.

    Each request ends with exactly one of :class:`RequestFinal` (stats + usage),
    :class:`Interrupted` (after ``cancel()``), a :class:`ServerError` naming it, or
    :class:`TurnAborted` (connection lost).

    ``cancel()`` abandons the request the server is working on. If that request ends on the
    server before the cancel reaches it, the server cancels the next queued request instead;
    the client follows it (so a cancel may end two requests, each with :class:`Interrupted`).
    """

    endpoint = TTS_ENDPOINT

    def __init__(
        self, config: Config | None = None, *, cancel_timeout: float = 5.0, **config_fields: Any
    ) -> None:
        super().__init__(config, config_fields, cancel_timeout=cancel_timeout)
        self._requests: deque[_Request] = deque()
        self._next = 0

    @property
    def pending_requests(self) -> tuple[int, ...]:
        return tuple(r.number for r in self._requests if r.state in _CANCELLABLE)

    def request(self, text: str, now: float, **params: Any) -> int:
        """Queue one request; ``params`` override the session's default config for it."""
        self._check_usable()
        if not isinstance(text, str) or not text.strip():
            raise LocalProtocolError("text must be a non-empty str")
        config = self._config.merged(Config.build(**params)) if params else self._config
        req = _Request(_Cycle(self._next, first_text_at=now, flushed_at=now), params=params)
        self._next += 1
        req.cycle.parts.append(text)
        self._requests.append(req)
        self._events.append(_new_turn_started(req.number))
        self._spell_check(req.cycle, text, config, None)
        self._send({"text": text, **config.to_dict()})
        return req.number

    def cancel(self, now: float) -> tuple[int, ...]:
        """Abandon the request currently generating (the oldest unfinished one). Returns its
        number, as a tuple like every session's ``cancel()`` (empty: none was unfinished)."""
        self._check_usable()
        target = next((r for r in self._requests if r.state in _CANCELLABLE), None)
        if target is not None:
            self._step(target, RequestInput.CANCEL)
        self._pending_cancels.append(
            _PendingCancel(now, [] if target is None else [target], sent_before=self._next)
        )
        self._send({"cancel": True})
        return () if target is None else (target.number,)

    def replay(self, replay: TurnReplay, now: float) -> int:
        """Re-send a request lost to a restart close (on a fresh session/connection), with the
        parameters it was first sent with. Returns its new number."""
        return self.request(replay.text, now, **replay.options)

    def close_socket(self, now: float) -> None:
        """Close once the requests sent are answered (``/ws/tts`` has no ``close_socket``
        message): :attr:`close_code` turns 1000 when none is left waiting."""
        self._check_usable()
        self._closing = True

    @property
    def close_code(self) -> int | None:
        if self._closing and self._terminated is None and not self.pending_requests:
            return 1000
        return None

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if type(msg) is AudioFrame and self._requests:
            # The hot path: audio of the request being answered, in a state where the table
            # delivers it and stays (_REQUEST_SPEAKING); the same as _step(OUTPUT) + _audio.
            head = self._requests[0]
            if head.state in _REQUEST_SPEAKING:
                self._audio(head.cycle, msg, now)
                return
        kind = type(msg)
        handler = self._frame_handlers.get(kind)
        if handler is not None:  # interrupted, settings_updated
            handler(self, msg, now)
        elif isinstance(msg, ErrorFrame) and self._is_settings_error(msg):
            return
        elif not self._requests:
            if isinstance(msg, ErrorFrame):
                self._events.append(self._server_error(msg, None))
            else:
                self.dropped_frames += 1
        else:
            head = self._requests[0]
            event = _REQUEST_INPUTS.get(kind)
            if event is not None:
                self._step(head, event, msg, now)
            elif head.state in _CANCELLABLE:
                self.unknown_frames += 1
            else:  # anything before the cancelled request's end is its
                self.dropped_frames += 1

    # -- the request table's actions --------------------------------------------------------------
    def _deliver_output(self, req: _Request, msg: ServerMessage, now: float) -> None:
        self._deliver(req.cycle, msg, now)

    def _warn(self, req: _Request, msg: WarningFrame, now: float) -> None:
        self._events.append(ServerWarning(msg.warning, req.number))

    def _final(self, req: _Request, msg: FinalFrame, now: float) -> None:
        self._requests.popleft()
        self._events.append(
            RequestFinal(
                req.number, msg.chunks, msg.total_samples, msg.dur_ms, msg.gen_ms, msg.rtf,
                msg.usage, msg.debug, req.cycle.metrics(now),
            )
        )

    def _fail(self, req: _Request, msg: ErrorFrame, now: float) -> None:
        self._requests.popleft()
        self._events.append(self._server_error(msg, req.number, ends_work=True))

    def _retarget(self, head: _Request, msg: ServerMessage, now: float) -> None:
        """The cancelled request ended before the cancel reached the server: the server will
        cancel the next request sent before the cancel instead."""
        self._requests.popleft()
        pending = next((p for p in self._pending_cancels if head in p.turns), None)
        metrics = head.cycle.metrics(self._time(), cancelled=True)
        self._events.append(Interrupted(head.number, metrics=metrics))
        if pending is None:
            return
        pending.turns.remove(head)
        pending.reported = True
        nxt = self._requests[0] if self._requests else None
        if nxt is not None and nxt.state in _CANCELLABLE and nxt.number < pending.sent_before:
            self._step(nxt, RequestInput.CANCEL)
            pending.turns.append(nxt)

    # -- cancel and connection loss ---------------------------------------------------------------
    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns and not pending.reported:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        event = RequestInput.INTERRUPTED if acknowledged else RequestInput.CANCEL_TIMEOUT
        for req in pending.turns:
            self._step(req, event)
            if req in self._requests:  # abandoned on a timeout: later requests flow
                self._requests.remove(req)
        if pending.timed_out:
            pending.reported = True

    def _unfinished(self) -> list[Any]:
        requests = list(self._requests)
        self._requests.clear()
        return requests


_REQUEST_ACTIONS: dict[ClientAction, _Action] = {
    _A.DELIVER: TTSClientSession._deliver_output,
    _A.WARN: TTSClientSession._warn,
    _A.FINAL: TTSClientSession._final,
    _A.FAIL: TTSClientSession._fail,
    _A.RETARGET: TTSClientSession._retarget,
    _A.INTERRUPT: _ClientSession._interrupted,
    _A.ABANDON: _ClientSession._unacknowledged,
    _A.ABORT: _ClientSession._abort,
}
#: The request's input for each server frame that belongs to the oldest unfinished request.
_REQUEST_INPUTS: dict[type[Any], RequestInput] = {
    AudioFrame: RequestInput.OUTPUT,
    GenerationStartedFrame: RequestInput.OUTPUT,
    WordTimestampsFrame: RequestInput.OUTPUT,
    ChunkCompleteFrame: RequestInput.OUTPUT,
    WarningFrame: RequestInput.WARNING,
    FinalFrame: RequestInput.FINAL,
    ErrorFrame: RequestInput.ERROR,
}
#: Request states a cancel can target (still waiting for their output), by the table.
_CANCELLABLE = frozenset(
    state for state, event in CLIENT_REQUEST_TABLE if event is RequestInput.CANCEL
)
#: Request states in which the table delivers output and keeps the state (the audio hot path).
_REQUEST_SPEAKING = _speaking(CLIENT_REQUEST_TABLE, RequestInput.OUTPUT)
_machine(
    TTSClientSession, CLIENT_REQUEST_TABLE, _REQUEST_ACTIONS,
    LOCAL_REQUEST_INPUTS, RequestInput.CONNECTION_LOST,
    {
        InterruptedFrame: TTSClientSession._on_interrupted,
        SettingsUpdatedFrame: TTSClientSession._on_settings,
    },
)
