"""Events the client sessions hand to the application (frozen, slotted, comparable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _fast
from ._messages import AudioFrame, Usage, WordTimestamp

__all__ = [
    "AudioChunk",
    "ChunkComplete",
    "ClientEvent",
    "ConnectionTerminated",
    "ContextClosed",
    "ContextCreated",
    "ContextTimeout",
    "Diagnostic",
    "ErrorCode",
    "GenerationStarted",
    "Interrupted",
    "Reconnecting",
    "RequestFinal",
    "ServerError",
    "ServerWarning",
    "SessionClosed",
    "SettingsUpdated",
    "TurnAborted",
    "TurnClosed",
    "TurnFinal",
    "TurnMetrics",
    "TurnReplay",
    "TurnStarted",
    "WordTimestamps",
]


class ErrorCode(str, Enum):
    """The wire's ``error_code`` values (protocol.md#error-codes); ``UNKNOWN`` for anything else."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    MISSING_VOICE_ID = "MISSING_VOICE_ID"
    UNAUTHORIZED = "UNAUTHORIZED"
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_CONTEXTS = "TOO_MANY_CONTEXTS"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    EMPTY_AUDIO = "EMPTY_AUDIO"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, value: str | None) -> ErrorCode:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


#: Error codes after which the server closes the socket (protocol.md#fatal-errors).
FATAL_CODES = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INSUFFICIENT_CREDITS,
        ErrorCode.RATE_LIMITED,
        ErrorCode.MODEL_UNAVAILABLE,
    }
)


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    """Timing and volume of one finished turn (stream), request (tts), flush-cycle or whole
    context (multi), on its terminal event's ``metrics``.

    Times are the ``now`` values the session was given (monotonic seconds), so two of them
    subtract to an exact interval. ``first_text_at``: the turn's first text was sent (tts: the
    request; a replayed turn keeps its first connection's times); ``flushed_at``: its flush (or
    ``close``) was sent, None when it never was (cancelled before, or ended by the server's idle
    flush); ``first_audio_at``: its first audio frame was received, None without audio;
    ``ended_at``: its terminal event arrived. ``audio_seconds`` / ``audio_chunks``: the audio
    delivered (duplicates and frames dropped after a cancel do not count). ``cancelled``: ended by
    a cancel (or an immediate context close); ``reconnects``: how many times the connection was
    re-established while the turn was unfinished (it was replayed on the new connection).
    """

    turn: int
    context_id: str | None
    first_text_at: float | None
    flushed_at: float | None
    first_audio_at: float | None
    ended_at: float
    audio_seconds: float
    audio_chunks: int
    cancelled: bool = False
    reconnects: int = 0

    @property
    def time_to_first_audio(self) -> float | None:
        """Seconds from the first text to the first audio (None without audio)."""
        if self.first_audio_at is None or self.first_text_at is None:
            return None
        return self.first_audio_at - self.first_text_at

    @property
    def flush_to_first_audio(self) -> float | None:
        """Seconds from the flush to the first audio (None without audio or flush; negative
        when audio of complete sentences began before the flush)."""
        if self.first_audio_at is None or self.flushed_at is None:
            return None
        return self.first_audio_at - self.flushed_at

    @property
    def duration(self) -> float | None:
        """Seconds from the first text to the terminal event."""
        return None if self.first_text_at is None else self.ended_at - self.first_text_at


class _Event:
    """Base of the client events. :attr:`ends_work` says whether the event is the last one of
    the piece of work it names (a ``/ws/tts/stream`` turn, a ``/ws/tts`` request, a
    ``/ws/tts/multi`` context): nothing more of that work follows it. Which attribute names the
    work is the session's :attr:`work_key_attr` (``turn``, or ``context_id`` on multi)."""

    __slots__ = ()

    @property
    def ends_work(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TurnStarted(_Event):
    """A new turn (stream), request (tts) or context flush-cycle began on this side."""

    turn: int
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationStarted(_Event):
    turn: int
    chunk_id: int
    text: str
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class AudioChunk(_Event):
    """One audio frame of a turn. ``offset_s`` is where it starts on the turn's timeline."""

    turn: int
    frame: AudioFrame
    offset_s: float
    context_id: str | None = None

    @property
    def data(self) -> bytes:
        """Raw bytes in :attr:`encoding` (decoded when the frame was parsed)."""
        return self.frame.data

    def pcm16(self) -> bytes:
        frame = self.frame  # PCM16, the usual encoding, without one more call
        return frame.data if frame.enc == "pcm_s16le" else frame.pcm16()

    @property
    def encoding(self) -> str:
        return self.frame.enc

    @property
    def sample_rate(self) -> int:
        return self.frame.sr

    @property
    def samples(self) -> int:
        return self.frame.samples

    @property
    def idx(self) -> int:
        return self.frame.idx

    @property
    def chunk_id(self) -> int | None:
        return self.frame.chunk_id

    @property
    def duration_s(self) -> float:
        return self.frame.duration_s


#: ``AudioChunk(turn, frame, offset_s, context_id)``, its slots filled directly (the client's
#: hot path: one per audio message; see :mod:`._fast`), and the same for ``TurnStarted`` and
#: ``GenerationStarted``.
if TYPE_CHECKING:  # the signature the generated function has

    def _audio_chunk(
        turn: int, frame: AudioFrame, offset_s: float, context_id: str | None = None
    ) -> AudioChunk: ...

    def _turn_started(turn: int, context_id: str | None = None) -> TurnStarted: ...

    def _generation_started(
        turn: int, chunk_id: int, text: str, context_id: str | None = None
    ) -> GenerationStarted: ...

else:
    _audio_chunk = _fast.frozen_constructor(
        AudioChunk, ("turn", "frame", "offset_s", "context_id"), {"context_id": None}
    )
    #: the first events of every turn (on the way to its flush and to its first audio)
    _turn_started = _fast.frozen_constructor(
        TurnStarted, ("turn", "context_id"), {"context_id": None}
    )
    _generation_started = _fast.frozen_constructor(
        GenerationStarted, ("turn", "chunk_id", "text", "context_id"), {"context_id": None}
    )


@dataclass(frozen=True, slots=True)
class WordTimestamps(_Event):
    """Word timings of one text chunk: wire times (chunk-relative) plus the chunk's turn offset."""

    turn: int
    chunk_id: int | None
    words: tuple[WordTimestamp, ...]
    offset_ms: float
    context_id: str | None = None

    @property
    def turn_words(self) -> tuple[WordTimestamp, ...]:
        """The same words with ``start_ms``/``end_ms`` relative to the start of the turn."""
        off = self.offset_ms
        return tuple(
            WordTimestamp(
                w.word, w.start_ms + off, w.end_ms + off, w.char_start, w.char_end, w.score
            )
            for w in self.words
        )


@dataclass(frozen=True, slots=True)
class ChunkComplete(_Event):
    turn: int
    chunk_id: int
    audio_seconds: float
    gen_ms: float
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class TurnFinal(_Event):
    """``final``: no more audio for this turn (stream) or this flush (multi context)."""

    turn: int
    total_audio_seconds: float | None = None
    total_text_chunks: int | None = None
    total_audio_chunks: int | None = None
    context_id: str | None = None
    #: multi: the flush-cycle's timing and volume (None on ``/ws/tts/stream``, where
    #: :class:`TurnClosed` carries the turn's); not compared.
    metrics: TurnMetrics | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TurnClosed(_Event):
    """``session_closed``: the turn is over (terminal event of a graceful stream turn)."""

    turn: int
    usage: Usage | None
    total_audio_seconds: float | None = None
    total_text_chunks: int | None = None
    total_audio_chunks: int | None = None
    #: Timing and volume of the turn (not compared: two events equal without it).
    metrics: TurnMetrics | None = field(default=None, compare=False)

    @property
    def ends_work(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class RequestFinal(_Event):
    """``final`` of a one-shot ``/ws/tts`` request: statistics and usage (terminal)."""

    turn: int
    chunks: int | None
    total_samples: int | None
    dur_ms: float | None
    gen_ms: float | None
    rtf: float | None
    usage: Usage | None
    debug: Mapping[str, Any] | None = None
    #: Timing and volume of the turn (not compared: two events equal without it).
    metrics: TurnMetrics | None = field(default=None, compare=False)

    @property
    def ends_work(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Interrupted(_Event):
    """Terminal event of a cancelled turn/request/context flush-cycle.

    ``acknowledged`` is False when the server stayed quiet past the cancel timeout without
    sending ``interrupted`` (the turn is abandoned all the same).
    """

    turn: int | None
    context_id: str | None = None
    acknowledged: bool = True
    #: Timing and volume of the turn (not compared: two events equal without it).
    metrics: TurnMetrics | None = field(default=None, compare=False)

    @property
    def ends_work(self) -> bool:
        """A turn's or a request's; a context's Interrupted ends only its flush-cycle."""
        return self.context_id is None


@dataclass(frozen=True, slots=True)
class TurnAborted(_Event):
    """Terminal event of a turn whose connection ended before it finished."""

    turn: int
    #: The close code that ended the connection (None: dropped without a close frame).
    close_code: int | None
    audio_delivered: bool
    unspoken_text: str
    context_id: str | None = None
    #: Timing and volume of the turn (not compared: two events equal without it).
    metrics: TurnMetrics | None = field(default=None, compare=False)

    @property
    def code(self) -> int | None:
        """Deprecated alias of :attr:`close_code`."""
        return self.close_code

    @property
    def ends_work(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ServerWarning(_Event):
    """A ``warning`` frame (the server's idle auto-flush), for the turn or context it names.

    Called ``Warning`` before; that name (which shadowed the builtin) is a deprecated alias.
    """

    message: str
    turn: int | None = None
    context_id: str | None = None


#: Deprecated alias of :class:`ServerWarning` (the old name shadowed the builtin ``Warning``).
Warning = ServerWarning


@dataclass(frozen=True, slots=True)
class SettingsUpdated(_Event):
    settings: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServerError(_Event):
    """An ``error`` frame: ``error_code`` typed (the wire's ``error_code``; ``raw_code`` as sent),
    ``status`` the HTTP-like status (the frame's ``code``)."""

    error_code: ErrorCode
    message: str
    status: int | None
    raw_code: str | None = None
    context_id: str | None = None
    turn: int | None = None
    request_id: str | None = None
    retry_after: float | None = None
    fatal: bool = False
    #: The error ended the turn it names: the server refused it before any output (no voice,
    #: or a voice outside its catalogue), so no ``final`` will come.
    ends_turn: bool = False
    #: The error ended the piece of work it names (set by the session: a refused stream turn,
    #: a failed ``/ws/tts`` request, a context the server would not open); not compared.
    ends_work: bool = field(default=False, compare=False, repr=False)

    @property
    def code(self) -> ErrorCode:
        """Deprecated alias of :attr:`error_code`."""
        return self.error_code


@dataclass(frozen=True, slots=True)
class Diagnostic(_Event):
    """A non-fatal hint from the client core (e.g. spell without normalize,
    rulings.md#ruling-20)."""

    message: str
    turn: int | None = None
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class ContextCreated(_Event):
    context_id: str


@dataclass(frozen=True, slots=True)
class ContextClosed(_Event):
    """``context_closed``: terminal event of a multi context."""

    context_id: str
    usage: Usage | None = None
    #: The whole context's timing and volume (``turn``: its last flush-cycle); not compared.
    metrics: TurnMetrics | None = field(default=None, compare=False)

    @property
    def ends_work(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ContextTimeout(_Event):
    context_id: str


@dataclass(frozen=True, slots=True)
class SessionClosed(_Event):
    """``session_closed`` on ``/ws/tts/multi``: answer to ``close_socket``."""

    total_audio_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class TurnReplay:
    """What to do with a turn the connection lost (restart closes 1012/1013).

    ``replayable`` turns had no audio delivered: send ``text`` again on a new connection
    (``ClientSession.replay``). Others report ``unspoken_text``: what was sent but not yet spoken
    (never silently lost).
    """

    turn: int
    text: str
    flushed: bool
    replayable: bool
    unspoken_text: str
    context_id: str | None = None
    #: When the lost turn's first text and flush were sent (kept by a replay); not compared.
    first_text_at: float | None = field(default=None, compare=False)
    flushed_at: float | None = field(default=None, compare=False)
    #: What the work was started with (a request's parameters, a context's voice settings),
    #: so that ``replay`` on a fresh session sends it the same way; not compared.
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(_Event):
    """The WebSocket closed (``close_code`` None: dropped without a close frame)."""

    close_code: int | None
    reason: str = ""
    restarting: bool = False
    replay: tuple[TurnReplay, ...] = ()

    @property
    def code(self) -> int | None:
        """Deprecated alias of :attr:`close_code`."""
        return self.close_code


@dataclass(frozen=True, slots=True)
class Reconnecting(_Event):
    """A client transport re-establishes its connection (a restart close 1012/1013, or a drop
    with ``reconnect=True``); emitted once per attempt, in the connection's log.

    ``attempt`` counts the attempts since the last connection that produced output;
    ``close_code`` is the close code that ended the previous connection (None: dropped without one);
    ``delay`` is the wait (seconds) before the new socket is opened; ``replayed`` names the
    turns (numbers, on the old connection) or contexts (ids) sent again on the new one.
    """

    attempt: int
    close_code: int | None
    reason: str
    delay: float
    replayed: tuple[str, ...] = ()

    @property
    def code(self) -> int | None:
        """Deprecated alias of :attr:`close_code`."""
        return self.close_code


ClientEvent: TypeAlias = (
    TurnStarted
    | GenerationStarted
    | AudioChunk
    | WordTimestamps
    | ChunkComplete
    | TurnFinal
    | TurnClosed
    | RequestFinal
    | Interrupted
    | TurnAborted
    | ServerWarning
    | SettingsUpdated
    | ServerError
    | Diagnostic
    | ContextCreated
    | ContextClosed
    | ContextTimeout
    | SessionClosed
    | ConnectionTerminated
    | Reconnecting
)
