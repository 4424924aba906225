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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as _json_string  # what dumps() uses
from typing import Any

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
    GenerationStarted,
    Interrupted,
    RequestFinal,
    ServerError,
    SessionClosed,
    SettingsUpdated,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    TurnMetrics,
    TurnReplay,
    TurnStarted,
    Warning,
    WordTimestamps,
    _audio_chunk,
)
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
    CLIENT_CONTEXT_TRANSITIONS,
    CLIENT_TURN_TRANSITIONS,
    LOCAL_TURN_INPUTS,
    ClientContextState,
    ClientTurnState,
    ContextInput,
    TurnInput,
)

__all__ = [
    "MAX_CONTEXTS",
    "MultiClientSession",
    "StreamClientSession",
    "TTSClientSession",
    "unspoken_text",
]

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

    def replay(self, flushed: bool, context_id: str | None = None) -> TurnReplay:
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
    """Outbox, events, cancel acknowledgement and error handling shared by all endpoints."""

    endpoint = ""

    def __init__(self, *, cancel_timeout: float = 5.0) -> None:
        if cancel_timeout <= 0:
            raise LocalProtocolError("cancel_timeout must be positive")
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

    def _on_interrupted(self, msg: InterruptedFrame) -> None:
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

    def _on_settings(self, msg: SettingsUpdatedFrame) -> None:
        self._settings_pending = max(0, self._settings_pending - 1)
        self._events.append(SettingsUpdated(dict(msg.settings)))

    def _server_error(self, msg: ErrorFrame, turn: int | None) -> ServerError:
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

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        raise NotImplementedError

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        raise NotImplementedError

    def _abort_all(self, code: int | None) -> Iterator[TurnReplay]:
        raise NotImplementedError


# =============================================================================================
# /ws/tts/stream


@dataclass(slots=True)
class _Turn:
    cycle: _Cycle
    state: ClientTurnState = ClientTurnState.OPEN
    last_text_at: float = -_INF
    flushed: bool = False

    @property
    def number(self) -> int:
        return self.cycle.number


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
        super().__init__(cancel_timeout=cancel_timeout)
        base = config or Config()
        self._config = base.merged(Config.build(**config_fields)) if config_fields else base
        self._send_config = True
        self._turns: deque[_Turn] = deque()
        self._next_turn = 0
        self._idle_guard = idle_flush_guard

    # -- config -----------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    def update_config(self, **fields: Any) -> None:
        """Change sticky config; it travels on the next turn's first frame (applies from then)."""
        self._config = self._config.merged(Config.build(**fields))
        self._send_config = True

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
        msg: dict[str, Any] = {"text": text}
        if turn is None:
            turn = _Turn(_Cycle(self._next_turn, first_text_at=now))
            self._next_turn += 1
            self._turns.append(turn)
            self._events.append(TurnStarted(turn.number))
            if self._send_config:
                msg.update(self._config.to_dict())
                self._send_config = False
        self._advance(turn, TurnInput.SEND_TEXT)
        turn.cycle.parts.append(text)
        turn.last_text_at = now
        self._spell_check(turn.cycle, text, self._config, None)
        if flush:
            self._advance(turn, TurnInput.FLUSH)
            turn.flushed = True
            turn.cycle.flushed_at = now
            msg["flush"] = True
        if len(msg) == 1:  # a plain token (the hot path): dumps({"text": text}), by hand
            self._send_json('{"text":' + _json_string(text) + "}")
        else:
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
        self._advance(turn, TurnInput.FLUSH)
        turn.flushed = True
        turn.cycle.flushed_at = now
        self._send({"flush": True})
        return turn.number

    def end_turn(self, now: float) -> int | None:
        """Send ``close`` (alias ``end_session``): graceful end of the open turn, if any."""
        self._check_usable()
        turn = self._open_turn()
        if turn is None:
            return None
        self._advance(turn, TurnInput.CLOSE)
        turn.flushed = True
        turn.cycle.flushed_at = now
        self._send_config = True
        self._send({"close": True})
        return turn.number

    def cancel(self, now: float) -> tuple[int, ...]:
        """Barge-in: abandon every unfinished turn. No audio of them is delivered after this."""
        self._check_usable()
        cancelled = list(self._turns)
        for turn in cancelled:
            self._advance(turn, TurnInput.CANCEL)
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
        if self._turns and self._turns[-1].state is ClientTurnState.OPEN:
            return self._turns[-1]
        return None

    def _advance(self, turn: _Turn, event: TurnInput) -> bool:
        new = CLIENT_TURN_TRANSITIONS.get((turn.state, event))
        if new is None:
            if event in LOCAL_TURN_INPUTS:
                raise LocalProtocolError(
                    f"cannot {event.value} turn {turn.number} in state {turn.state.value}"
                )
            self.dropped_frames += 1
            return False
        turn.state = new
        return True

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if type(msg) is AudioFrame and self._turns and not self._pending_cancels:
            # The hot path: audio of the turn being spoken (OUTPUT keeps OPEN / FLUSHED).
            first = self._turns[0]
            if first.state is ClientTurnState.OPEN or first.state is ClientTurnState.FLUSHED:
                cycle = first.cycle
                offset = cycle.on_audio(msg, now)
                if offset is None:
                    self._repeated_audio(cycle, msg)
                else:
                    self._events.append(_audio_chunk(cycle.number, msg, offset))
                return
        if isinstance(msg, InterruptedFrame):
            self._on_interrupted(msg)
            return
        if isinstance(msg, SettingsUpdatedFrame):
            self._on_settings(msg)
            return
        head = self._turns[0] if self._turns else None
        if isinstance(msg, ErrorFrame):
            if not self._is_settings_error(msg):
                event = self._server_error(msg, head.number if head else None)
                if head is not None and self._refuses(head, msg):
                    self._turns.popleft()
                    self._send_config = True  # the next turn states its voice again
                    event = replace(event, ends_turn=True)
                self._events.append(event)
            return
        gated = head is not None and self._pending_cancels and self._cancel_gates()
        if gated or head is None:
            # Output before the ack of a cancel is the cancelled turn's; output with no turn
            # is stray. Neither reaches the application.
            if gated:
                newest = self._turns[-1].number
                for p in self._pending_cancels:
                    if not p.timed_out:
                        p.tainted = newest
            if not isinstance(
                msg,
                AudioFrame
                | GenerationStartedFrame
                | ChunkCompleteFrame
                | WordTimestampsFrame
                | FinalFrame
                | SessionClosedFrame
                | WarningFrame,
            ):
                self.unknown_frames += 1
            elif isinstance(msg, WarningFrame) and head is None:
                self._events.append(Warning(msg.warning))
            else:
                self.dropped_frames += 1
            return
        cycle = head.cycle
        n = cycle.number
        if isinstance(msg, AudioFrame):
            if self._advance(head, TurnInput.OUTPUT):
                offset = cycle.on_audio(msg, now)
                if offset is None:
                    self._repeated_audio(cycle, msg)
                else:
                    self._events.append(_audio_chunk(n, msg, offset))
        elif isinstance(msg, GenerationStartedFrame):
            if self._advance(head, TurnInput.OUTPUT):
                cycle.on_generation_started(msg)
                self._events.append(GenerationStarted(n, msg.chunk_id, msg.text))
        elif isinstance(msg, WordTimestampsFrame):
            if self._advance(head, TurnInput.OUTPUT):
                self._events.append(
                    WordTimestamps(n, msg.chunk_id, msg.words, cycle.words_offset_ms(msg))
                )
        elif isinstance(msg, ChunkCompleteFrame):
            if self._advance(head, TurnInput.OUTPUT):
                cycle.on_chunk_complete(msg)
                self._events.append(ChunkComplete(n, msg.chunk_id, msg.audio_seconds, msg.gen_ms))
        elif isinstance(msg, WarningFrame):
            self._advance(head, TurnInput.IDLE_WARNING)
            self._events.append(Warning(msg.warning, n))
        elif isinstance(msg, FinalFrame):
            if self._advance(head, TurnInput.FINAL):
                self._events.append(
                    TurnFinal(
                        n, msg.total_audio_seconds, msg.total_text_chunks, msg.total_audio_chunks
                    )
                )
        elif isinstance(msg, SessionClosedFrame):
            if self._advance(head, TurnInput.SESSION_CLOSED):
                self._turns.popleft()
                self._events.append(
                    TurnClosed(
                        n,
                        msg.usage,
                        msg.total_audio_seconds,
                        msg.total_text_chunks,
                        msg.total_audio_chunks,
                        cycle.metrics(now),
                    )
                )
        else:
            self.unknown_frames += 1

    def _refuses(self, head: _Turn, msg: ErrorFrame) -> bool:
        """Does ``msg`` refuse the head turn? A voice error before any of its output: the
        server dropped the turn's text, so no ``final`` follows (REFUSED ends it)."""
        cycle = head.cycle
        return (
            msg.error_code in _REFUSALS
            and not self._pending_cancels
            and not cycle.audio_frames
            and not cycle.chunk_texts
            and self._advance(head, TurnInput.REFUSED)
        )

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        for turn in pending.turns:
            self._advance(turn, TurnInput.INTERRUPTED if acknowledged else TurnInput.CANCEL_TIMEOUT)
            metrics = turn.cycle.metrics(self._time(), cancelled=True)
            self._events.append(
                Interrupted(turn.number, acknowledged=acknowledged, metrics=metrics)
            )

    def _abandon(self, pending: _PendingCancel) -> None:
        """Turns sent after the abandoned cancel whose output may have been dropped with the
        cancelled turn's (frames were dropped while they waited) cannot be matched any more:
        they end too, with ``Interrupted(acknowledged=False)``, rather than wait forever."""
        if pending.tainted < 0 or self._cancel_gates():
            return
        while self._turns and self._turns[0].number <= pending.tainted:
            turn = self._turns.popleft()
            self._advance(turn, TurnInput.CANCEL)
            self._advance(turn, TurnInput.CANCEL_TIMEOUT)
            self._send_config = True
            metrics = turn.cycle.metrics(self._time(), cancelled=True)
            self._events.append(Interrupted(turn.number, acknowledged=False, metrics=metrics))
            self._events.append(
                Diagnostic(
                    f"turn {turn.number} ended: its output may have been dropped with the "
                    "unacknowledged cancel's",
                    turn=turn.number,
                )
            )

    def _abort_all(self, code: int | None) -> Iterator[TurnReplay]:
        while self._turns:
            turn = self._turns.popleft()
            self._advance(turn, TurnInput.CONNECTION_LOST)
            replay = turn.cycle.replay(turn.flushed)
            self._events.append(
                TurnAborted(
                    turn.number, code, not replay.replayable, replay.unspoken_text,
                    metrics=turn.cycle.metrics(self._time()),
                )
            )
            yield replay


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

    @property
    def number(self) -> int:
        return self.cycle.number

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

    def __init__(
        self,
        config: Config | None = None,
        *,
        cancel_timeout: float = 5.0,
        max_contexts: int = MAX_CONTEXTS,
        keepalive_interval: float | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__(cancel_timeout=cancel_timeout)
        base = config or Config()
        self._config = base.merged(Config.build(**config_fields)) if config_fields else base
        self._send_config = True
        self._contexts: dict[str, _Context] = {}
        self._tombstones: set[str] = set()
        self._max_contexts = max_contexts
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise LocalProtocolError("keepalive_interval must be positive")
        self._keepalive = keepalive_interval

    @property
    def config(self) -> Config:
        return self._config

    def update_config(self, **fields: Any) -> None:
        """Change session config; it travels on the next context creation."""
        self._config = self._config.merged(Config.build(**fields))
        self._send_config = True

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
        self._contexts[context_id] = ctx
        self._events.append(TurnStarted(0, context_id))
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
        graceful_from_open = not immediate and ctx.state in (
            ClientContextState.CREATING,
            ClientContextState.OPEN,
        )
        self._advance_local(ctx, event)
        if graceful_from_open:  # a graceful close flushes: the server sends a final first
            self._announce(ctx)
            ctx.mark_flush(now)
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
            targets = [
                c
                for c in self._contexts.values()
                if c.state in (ClientContextState.CREATING, ClientContextState.OPEN)
            ]
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
            if ctx.state in (ClientContextState.CREATING, ClientContextState.OPEN):
                self._announce(ctx)
                ctx.mark_flush(now)
        self._send({"close_socket": True})

    def replay(self, replay: TurnReplay, now: float, *, voice_id: int | str | None = None) -> None:
        """Re-create a context lost to a restart close and re-send its unspoken text."""
        if replay.context_id is None:
            raise LocalProtocolError("not a multi-context replay")
        if replay.context_id not in self._contexts:
            self.create_context(replay.context_id, now, voice_id=voice_id)
        if replay.text:
            ctx = self._contexts[replay.context_id]
            current = not ctx.flush_marks  # the text starts the current cycle
            self.send_text(replay.context_id, replay.text, now, flush=replay.flushed)
            if current:
                ctx.cycle.adopt(replay)

    # -- timers -------------------------------------------------------------------------------
    def _other_deadline(self) -> float | None:
        # Same conditions as _other_timeout: a deadline it would not act on is never reported.
        if self._keepalive is None or self._terminated is not None or self._closing:
            return None
        times = [
            c.last_sent_at
            for c in self._contexts.values()
            if c.state in (ClientContextState.OPEN, ClientContextState.CREATING)
        ]
        return min(times) + self._keepalive if times else None

    def _other_timeout(self, now: float) -> None:
        if self._keepalive is None or self._terminated is not None or self._closing:
            return
        for ctx in list(self._contexts.values()):
            if (
                ctx.state in (ClientContextState.OPEN, ClientContextState.CREATING)
                and now >= ctx.last_sent_at + self._keepalive
            ):
                self.keep_alive(ctx.context_id, now)

    # -- internals ----------------------------------------------------------------------------
    def _usable_context(self, context_id: str, what: str) -> _Context:
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise LocalProtocolError(f"cannot {what} context {context_id!r}: create it first")
        self._advance_local(ctx, ContextInput.SEND, what)
        return ctx

    def _advance_local(self, ctx: _Context, event: ContextInput, what: str = "") -> None:
        new = CLIENT_CONTEXT_TRANSITIONS.get((ctx.state, event))
        if new is None:
            raise LocalProtocolError(
                f"cannot {what or event.value} context {ctx.context_id!r} in state "
                f"{ctx.state.value}"
            )
        ctx.state = new

    def _advance(self, ctx: _Context, event: ContextInput) -> bool:
        new = CLIENT_CONTEXT_TRANSITIONS.get((ctx.state, event))
        if new is None:
            self.dropped_frames += 1
            return False
        ctx.state = new
        if new is ClientContextState.CLOSED:
            del self._contexts[ctx.context_id]
            self._tombstones.add(ctx.context_id)
        return True

    def _cancelling(self, context_id: str) -> bool:
        return any(
            not p.timed_out and p.context_ids is not None and context_id in p.context_ids
            for p in self._pending_cancels
        )

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if isinstance(msg, InterruptedFrame):
            self._on_interrupted(msg)
            return
        if isinstance(msg, SettingsUpdatedFrame):
            self._on_settings(msg)
            return
        if isinstance(msg, SessionClosedFrame):
            self._events.append(SessionClosed(msg.total_audio_seconds))
            return
        if isinstance(msg, ErrorFrame):
            self._on_error(msg)
            return
        if isinstance(msg, WarningFrame):
            self._events.append(Warning(msg.warning, None, msg.context_id))
            return
        context_id = getattr(msg, "context_id", None)
        ctx = None if context_id is None else self._contexts.get(context_id)
        if ctx is None:
            if isinstance(
                msg,
                AudioFrame
                | GenerationStartedFrame
                | ChunkCompleteFrame
                | WordTimestampsFrame
                | FinalFrame
                | ContextCreatedFrame
                | ContextClosedFrame
                | ContextTimeoutFrame,
            ):
                self.dropped_frames += 1  # tombstoned or unknown context
            else:
                self.unknown_frames += 1
            return
        cid = ctx.context_id
        if isinstance(msg, ContextCreatedFrame):
            was_creating = ctx.state is ClientContextState.CREATING
            if self._advance(ctx, ContextInput.CREATED) and was_creating:
                self._events.append(ContextCreated(cid))
            return
        if isinstance(msg, ContextClosedFrame):
            immediate = ctx.state is ClientContextState.CLOSING_IMMEDIATE
            if self._advance(ctx, ContextInput.CLOSED):
                metrics = self._context_metrics(ctx, now, immediate)
                self._events.append(ContextClosed(cid, msg.usage, metrics))
            return
        if isinstance(msg, ContextTimeoutFrame):
            immediate = ctx.state is ClientContextState.CLOSING_IMMEDIATE
            if self._advance(ctx, ContextInput.TIMEOUT) and not immediate:
                self._events.append(ContextTimeout(cid))
            return
        if self._cancelling(cid) or ctx.state is ClientContextState.CLOSING_IMMEDIATE:
            self.dropped_frames += 1
            return
        if not self._advance(ctx, ContextInput.OUTPUT):
            return
        cycle = ctx.cycle
        n = cycle.number
        if isinstance(msg, AudioFrame):
            offset = cycle.on_audio(msg, now)
            if offset is None:
                self._repeated_audio(cycle, msg, cid)
            else:
                self._events.append(_audio_chunk(n, msg, offset, cid))
        elif isinstance(msg, GenerationStartedFrame):
            cycle.on_generation_started(msg)
            self._events.append(GenerationStarted(n, msg.chunk_id, msg.text, cid))
        elif isinstance(msg, WordTimestampsFrame):
            self._events.append(
                WordTimestamps(n, msg.chunk_id, msg.words, cycle.words_offset_ms(msg), cid)
            )
        elif isinstance(msg, ChunkCompleteFrame):
            cycle.on_chunk_complete(msg)
            self._events.append(ChunkComplete(n, msg.chunk_id, msg.audio_seconds, msg.gen_ms, cid))
        elif isinstance(msg, FinalFrame):
            self._events.append(
                TurnFinal(
                    n, msg.total_audio_seconds, msg.total_text_chunks, msg.total_audio_chunks, cid,
                    cycle.metrics(now, cid),
                )
            )
            self._new_cycle(ctx)
        else:
            self.unknown_frames += 1

    def _announce(self, ctx: _Context) -> None:
        if not ctx.announced:
            ctx.announced = True
            self._events.append(TurnStarted(ctx.number, ctx.context_id))

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

    def _on_error(self, msg: ErrorFrame) -> None:
        if self._is_settings_error(msg):
            return
        ctx = None if msg.context_id is None else self._contexts.get(msg.context_id)
        event = self._server_error(msg, None if ctx is None else ctx.number)
        self._events.append(event)
        if ctx is not None and event.code is ErrorCode.TOO_MANY_CONTEXTS:
            self._advance(ctx, ContextInput.REJECTED)

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        for ctx, number, cycle in pending.turns:
            metrics = cycle.metrics(self._time(), ctx.context_id, cancelled=True)
            self._events.append(Interrupted(number, ctx.context_id, acknowledged, metrics))

    def _abort_all(self, code: int | None) -> Iterator[TurnReplay]:
        for ctx in list(self._contexts.values()):
            live = ctx.state in (
                ClientContextState.CREATING,
                ClientContextState.OPEN,
                ClientContextState.CLOSING,
            )
            flushed = bool(ctx.flush_marks)
            replay = ctx.cycle.replay(flushed, ctx.context_id)
            self._advance(ctx, ContextInput.CONNECTION_LOST)
            if live:
                self._events.append(
                    TurnAborted(
                        ctx.number,
                        code,
                        not replay.replayable,
                        replay.unspoken_text,
                        ctx.context_id,
                        ctx.cycle.metrics(self._time(), ctx.context_id),
                    )
                )
                yield replay


# =============================================================================================
# /ws/tts


@dataclass(slots=True)
class _Request:
    cycle: _Cycle
    cancelled: bool = False
    announced: bool = False  # its Interrupted was emitted (cancel timed out); not again

    @property
    def number(self) -> int:
        return self.cycle.number


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
        super().__init__(cancel_timeout=cancel_timeout)
        base = config or Config()
        self._config = base.merged(Config.build(**config_fields)) if config_fields else base
        self._requests: deque[_Request] = deque()
        self._next = 0

    @property
    def pending_requests(self) -> tuple[int, ...]:
        return tuple(r.number for r in self._requests if not r.cancelled)

    def request(self, text: str, now: float, **params: Any) -> int:
        """Queue one request; ``params`` override the session's default config for it."""
        self._check_usable()
        if not isinstance(text, str) or not text.strip():
            raise LocalProtocolError("text must be a non-empty str")
        config = self._config.merged(Config.build(**params)) if params else self._config
        req = _Request(_Cycle(self._next, first_text_at=now, flushed_at=now))
        self._next += 1
        req.cycle.parts.append(text)
        self._requests.append(req)
        self._events.append(TurnStarted(req.number))
        self._spell_check(req.cycle, text, config, None)
        self._send({"text": text, **config.to_dict()})
        return req.number

    def cancel(self, now: float) -> int | None:
        """Abandon the request currently generating (the oldest unfinished one)."""
        self._check_usable()
        target = next((r for r in self._requests if not r.cancelled), None)
        if target is not None:
            target.cancelled = True
        self._pending_cancels.append(
            _PendingCancel(now, [] if target is None else [target], sent_before=self._next)
        )
        self._send({"cancel": True})
        return None if target is None else target.number

    def _dispatch(self, msg: ServerMessage, now: float) -> None:
        if isinstance(msg, InterruptedFrame):
            self._on_interrupted(msg)
            return
        if isinstance(msg, SettingsUpdatedFrame):
            self._on_settings(msg)
            return
        if isinstance(msg, ErrorFrame) and self._is_settings_error(msg):
            return
        if not self._requests:
            if isinstance(msg, ErrorFrame):
                self._events.append(self._server_error(msg, None))
            else:
                self.dropped_frames += 1
            return
        head = self._requests[0]
        if head.cancelled:
            if isinstance(msg, FinalFrame | ErrorFrame):
                self._retarget_cancel(head)
            else:
                self.dropped_frames += 1
            return
        cycle = head.cycle
        n = cycle.number
        if isinstance(msg, AudioFrame):
            offset = cycle.on_audio(msg, now)
            if offset is None:
                self._repeated_audio(cycle, msg)
            else:
                self._events.append(_audio_chunk(n, msg, offset))
        elif isinstance(msg, WordTimestampsFrame):
            self._events.append(
                WordTimestamps(n, msg.chunk_id, msg.words, cycle.words_offset_ms(msg))
            )
        elif isinstance(msg, GenerationStartedFrame):
            cycle.on_generation_started(msg)
            self._events.append(GenerationStarted(n, msg.chunk_id, msg.text))
        elif isinstance(msg, ChunkCompleteFrame):
            cycle.on_chunk_complete(msg)
            self._events.append(ChunkComplete(n, msg.chunk_id, msg.audio_seconds, msg.gen_ms))
        elif isinstance(msg, FinalFrame):
            self._requests.popleft()
            self._events.append(
                RequestFinal(
                    n,
                    msg.chunks,
                    msg.total_samples,
                    msg.dur_ms,
                    msg.gen_ms,
                    msg.rtf,
                    msg.usage,
                    msg.debug,
                    cycle.metrics(now),
                )
            )
        elif isinstance(msg, ErrorFrame):
            self._requests.popleft()
            self._events.append(self._server_error(msg, n))
        elif isinstance(msg, WarningFrame):
            self._events.append(Warning(msg.warning, n))
        else:
            self.unknown_frames += 1

    def _retarget_cancel(self, head: _Request) -> None:
        """The cancelled request ended before the cancel reached the server: the server will
        cancel the next request sent before the cancel instead."""
        self._requests.popleft()
        pending = next((p for p in self._pending_cancels if head in p.turns), None)
        if not head.announced:
            metrics = head.cycle.metrics(self._time(), cancelled=True)
            self._events.append(Interrupted(head.number, metrics=metrics))
        if pending is None:
            return
        pending.turns.remove(head)
        pending.reported = True
        nxt = self._requests[0] if self._requests else None
        if nxt is not None and not nxt.cancelled and nxt.number < pending.sent_before:
            nxt.cancelled = True
            pending.turns.append(nxt)

    def _finish_cancel(self, pending: _PendingCancel, *, acknowledged: bool) -> None:
        if not pending.turns and not pending.reported:
            self._events.append(Interrupted(None, acknowledged=acknowledged))
        for req in pending.turns:
            if not req.announced:
                metrics = req.cycle.metrics(self._time(), cancelled=True)
                self._events.append(
                    Interrupted(req.number, acknowledged=acknowledged, metrics=metrics)
                )
            req.announced = True
            if req in self._requests:  # abandoned on a timeout: later requests flow
                self._requests.remove(req)
        if pending.timed_out:
            pending.reported = True

    def _abort_all(self, code: int | None) -> Iterator[TurnReplay]:
        while self._requests:
            req = self._requests.popleft()
            replay = req.cycle.replay(True)
            self._events.append(
                TurnAborted(
                    req.number, code, not replay.replayable, replay.unspoken_text,
                    metrics=req.cycle.metrics(self._time()),
                )
            )
            yield replay
