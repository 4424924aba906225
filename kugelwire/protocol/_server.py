"""Server sessions (message level) for ``/ws/tts/stream``, ``/ws/tts/multi`` and ``/ws/tts``.

A server session turns client frames into :class:`SynthesisRequested` events for a speech engine
and turns what the engine hands back (:meth:`send_audio`, :meth:`send_word_timestamps`,
:meth:`complete_chunk`) into the wire's frames: ``generation_started``, ``audio`` (bounded
frames, G.711-encoded when ``output_format`` asks), ``word_timestamps``, ``chunk_complete``,
``final``, ``session_closed`` / ``context_closed`` with totals and usage.

Pure and deterministic: time comes in as ``now``; ``next_deadline()`` / ``handle_timeout(now)``
drive the chunker's confirm/stale timers, the 5 s idle auto-flush and context inactivity.
One chunk per turn (per context) is with the engine at a time, so a turn's frames are in order.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _messages  # the context frames, by module: _messages.ContextCreatedFrame
from ._catalogue import DEFAULT_MODEL, MODELS, VoiceCatalogue
from ._chunker import Chunker, TextChunk
from ._config import SETTINGS_KEYS, Config, resolve_audio_format
from ._constants import MULTI_ENDPOINT, SERVICE_RESTART, STREAM_ENDPOINT, TTS_ENDPOINT
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._markup import MarkupError
from ._messages import (
    ClientMessage,
    ErrorFrame,
    FinalFrame,
    GenerationStartedFrame,
    InterruptedFrame,
    SessionClosedFrame,
    SettingsUpdatedFrame,
    Usage,
    WarningFrame,
    WordTimestamp,
    WordTimestampsFrame,
    parse_client_message,
)
from ._state import (
    SERVER_CONTEXT_LOCAL_INPUTS,
    SERVER_CONTEXT_TRANSITIONS,
    SERVER_REQUEST_TRANSITIONS,
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

_MAX_TOMBSTONES = 1024

__all__ = [
    "IDLE_WARNING",
    "ChunkRef",
    "MultiServerSession",
    "ServerLimits",
    "StreamServerSession",
    "SynthesisCancelled",
    "SynthesisParams",
    "SynthesisRequested",
    "TTSServerSession",
]

IDLE_WARNING = (
    'Turn ended after 5s of inactivity. Send {"flush": true} to end a turn explicitly — it '
    "lowers latency and avoids this auto-flush."
)
_INF = math.inf


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Server-side settings and limits (rulings.md#limits; all configurable)."""

    idle_flush_s: float = 5.0
    max_text_chars: int = 100_000  # per turn / context / request
    max_contexts: int = 20
    context_timeout_s: float = 20.0
    max_context_timeout_s: float = 180.0
    max_buffer_length: int = 10_000  # default and maximum of a client's max_buffer_length
    confirm_delay_s: float = 0.05
    frame_ms: int = 200  # audio frames carry at most this much audio
    max_request_chars: int = 10_000  # /ws/tts request text
    #: Frames waiting behind a draining turn (stream) / requests waiting behind the current one
    #: (/ws/tts), and the characters of text they carry; a frame over either is refused.
    max_queued_messages: int = 10_000
    max_queued_chars: int = 100_000


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Handle of one text chunk handed to the engine; pass it back with its audio."""

    serial: int  # unique within the session
    turn: int  # stream turn / tts request / multi flush-cycle
    chunk_id: int
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class SynthesisParams:
    """What the engine needs besides the text; PCM16 is expected at ``sample_rate``."""

    voice_id: int | str | None
    model_id: str
    language: str
    speed: float
    sample_rate: int
    encoding: str  # what the wire will carry (the session encodes G.711 itself)
    cfg_scale: float | None = None
    temperature: float | None = None
    normalize: bool = True
    word_timestamps: bool = False


@dataclass(frozen=True, slots=True)
class SynthesisRequested:
    """Speak ``chunk`` (its ``text`` is markup-free; spelled spans and breaks are attached)."""

    ref: ChunkRef
    chunk: TextChunk
    params: SynthesisParams


@dataclass(frozen=True, slots=True)
class SynthesisCancelled:
    """Stop working on ``ref``: its audio would be dropped (barge-in, close, disconnect)."""

    ref: ChunkRef


ServerEvent = SynthesisRequested | SynthesisCancelled


def _params(
    config: Config,
    enc: str,
    sr: int,
    temperature_default: float | None,
    catalogue: VoiceCatalogue | None = None,
) -> SynthesisParams:
    voice = catalogue.find(config.voice_id) if catalogue is not None else None
    return SynthesisParams(
        voice_id=voice.id if voice is not None else config.voice_id,
        model_id=config.model_id or DEFAULT_MODEL,
        # no detection: the request's language, else the voice's, else English
        language=config.language or (voice.language if voice is not None else "en"),
        speed=config.speed if config.speed is not None else 1.0,
        sample_rate=sr,
        encoding=enc,
        cfg_scale=config.cfg_scale,
        temperature=config.temperature if config.temperature is not None else temperature_default,
        normalize=config.normalize is not False,
        word_timestamps=bool(config.word_timestamps),
    )


@dataclass(slots=True)
class _Job:
    ref: ChunkRef
    work: _Work
    chunk: TextChunk
    samples: int = 0
    words: list[WordTimestamp] = field(default_factory=list)


@dataclass(slots=True)
class _Work:
    """One stream turn, multi context, or tts request: its text pipeline and output counters."""

    number: int
    config: Config
    params: SynthesisParams
    chunker: Chunker
    context_id: str | None = None
    #: Chunks to speak, in order; ``None`` is a flush mark (multi: that flush's ``final`` is due
    #: once everything before it is spoken).
    queue: deque[TextChunk | None] = field(default_factory=deque)
    job: _Job | None = None
    next_chunk_id: int = 0
    idx: int = 0  # audio frame index within the current cycle
    flushed: bool = False  # the chunker has been flushed; nothing more is coming this cycle
    characters: int = 0
    total_samples: int = 0  # whole turn/context (usage)
    text_chunks: int = 0
    audio_frames: int = 0
    gen_ms: float = 0.0
    first_audio_at: float | None = None
    started_at: float = 0.0
    #: characters of the chunks in :attr:`queue`
    queued_chars: int = 0

    def push(self, chunks: Iterable[TextChunk | None]) -> None:
        for chunk in chunks:
            self.queue.append(chunk)
            if chunk is not None:
                self.queued_chars += len(chunk.text)

    def pop(self) -> TextChunk | None:
        chunk = self.queue.popleft()
        if chunk is not None:
            self.queued_chars -= len(chunk.text)
        return chunk

    def drop(self) -> None:
        self.queue.clear()
        self.queued_chars = 0

    @property
    def held_chars(self) -> int:
        """Characters of text this work still holds (buffered, queued, being spoken)."""
        job = self.job
        return (self.chunker.buffered_chars + self.queued_chars
                + (len(job.chunk.text) if job is not None else 0))

    @property
    def busy(self) -> bool:
        return self.job is not None or bool(self.queue) or self.chunker.has_content

    def audio_seconds(self, samples: int | None = None) -> float:
        n = self.total_samples if samples is None else samples
        return round(n / self.params.sample_rate, 6)

    def usage(self) -> Usage:
        return Usage(
            audio_seconds=self.audio_seconds(),
            characters=self.characters,
            cost_cents=None,
            model_id=self.params.model_id,
        )


class _ServerSession:
    """Outbox, events, engine hand-off and audio framing shared by all endpoints."""

    endpoint = ""
    temperature_default: float | None = 0.4

    def __init__(
        self,
        *,
        limits: ServerLimits | None = None,
        config: Config | None = None,
        catalogue: VoiceCatalogue | None = None,
        lenient: bool = False,
        request_id: str | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self._config = config or Config()  # sticky connection config
        #: The voices (and models) ``voice_id`` / ``model_id`` may name; None: any voice id.
        self.catalogue = catalogue
        #: Lenient: accept what the hosted service refuses (no voice, unknown voice or model)
        #: and speak with defaults instead. Strict (the default) rejects it like the service.
        self.lenient = lenient
        #: Stamped on every error frame (the connection's id; see :meth:`bind_request_id`).
        self.request_id = request_id
        self._outbox: list[str] = []
        self._events: deque[ServerEvent] = deque()
        self._jobs: dict[int, _Job] = {}
        self._serial = 0
        self._close_code: int | None = None
        self._closed = False  # connection lost or close sent: everything else is ignored
        #: Audio handed in for cancelled/unknown chunks (barge-in races), in calls.
        self.dropped_audio = 0
        #: Called with (characters of text, starts new work, context id) before a text frame
        #: applies; it
        #: raises :class:`RemoteProtocolError` to refuse the whole frame (the server's memory
        #: caps). None: no caps beyond :class:`ServerLimits`.
        self.admission: Callable[[int, bool, str | None], None] | None = None
        self._setup()

    # -- the MessageSession protocol -------------------------------------------------------
    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def config(self) -> Config:
        return self._config

    def messages_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> ServerEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[ServerEvent]:
        while self._events:
            yield self._events.popleft()

    def bind_request_id(self, request_id: str) -> None:
        """Use ``request_id`` (the connection's, bound at the upgrade) on every error frame."""
        self.request_id = request_id

    def receive_message(self, text: str, now: float) -> None:
        """One client text frame. Bad input becomes an error frame; the socket stays open."""
        if self._closed or self._close_code is not None:
            return
        try:
            msg = parse_client_message(text)
            if not self.lenient:
                self._check_identity(msg)
            if self.admission is not None and msg.text:
                self.admission(len(msg.text), self._starts_work(msg), msg.context_id)
            self._handle(msg, now)
        except RemoteProtocolError as exc:
            self._error(exc.message, exc.error_code, exc.code, exc.context_id)

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        """Disconnect: every chunk in flight is cancelled; nothing else is sent."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            self._cancel_job(job)
        self._outbox.clear()

    def held_chars(self) -> int:
        """Characters of client text this session holds: buffered, queued or being spoken."""
        return sum(work.held_chars for work in self._works()) + self._waiting_chars()

    def _setup(self) -> None:
        """The endpoint's own state (called at the end of ``__init__``)."""
        raise NotImplementedError

    def _works(self) -> Iterator[_Work]:
        raise NotImplementedError

    def _waiting_chars(self) -> int:
        return 0

    def _starts_work(self, msg: ClientMessage) -> bool:
        """Whether a text frame ``msg`` would start a new turn, request or context."""
        return True

    def next_deadline(self) -> float | None:
        best = _INF
        for d in self._deadlines():
            if d is not None and d < best:
                best = d
        return None if best == _INF else best

    def handle_timeout(self, now: float) -> None:
        if self._closed:
            return
        self._timeout(now)

    # -- input from the engine ------------------------------------------------------------
    def send_audio(self, ref: ChunkRef, pcm: bytes, now: float) -> bool:
        """PCM16LE at the session's rate for ``ref``. False if the chunk was cancelled."""
        job = self._jobs.get(ref.serial)
        if job is None or self._closed:
            self.dropped_audio += 1
            return False
        if len(pcm) % 2:
            raise LocalProtocolError("PCM16 audio must have an even number of bytes")
        data = pcm
        work = job.work
        sr = work.params.sample_rate
        step = max(1, sr * self.limits.frame_ms // 1000) * 2
        for start in range(0, len(data), step):
            self._emit_audio(job, data[start : start + step], now)
        return True

    def send_word_timestamps(
        self, ref: ChunkRef, words: Iterable[WordTimestamp], now: float
    ) -> bool:
        """Word timings of ``ref`` (chunk-relative ms); sent after the chunk's audio."""
        job = self._jobs.get(ref.serial)
        if job is None or self._closed:
            return False
        job.words.extend(words)
        return True

    def complete_chunk(self, ref: ChunkRef, gen_ms: float, now: float) -> bool:
        """All audio of ``ref`` has been handed in: ``word_timestamps``, ``chunk_complete``."""
        job = self._jobs.pop(ref.serial, None)
        if job is None or self._closed:
            return False
        work = job.work
        work.job = None
        work.gen_ms += gen_ms
        self._chunk_done(job, gen_ms, now)
        self._pump(work, now)
        return True

    def fail_chunk(self, ref: ChunkRef, message: str, now: float) -> bool:
        """The engine failed on ``ref``: ``INTERNAL_ERROR`` frame, then carry on as completed."""
        if ref.serial not in self._jobs or self._closed:
            return False
        self._error(message or "Audio generation failed", "INTERNAL_ERROR", 500, ref.context_id)
        return self.complete_chunk(ref, 0.0, now)

    # -- server-initiated close -------------------------------------------------------------
    def shutdown(self, now: float, code: int = SERVICE_RESTART) -> None:
        """Graceful restart: close idle sockets at once, busy ones after their current work."""
        self._shutdown_code = code
        self._maybe_shutdown()

    _shutdown_code: int | None = None

    # -- helpers ----------------------------------------------------------------------------
    def _send(self, frame: Any) -> None:
        self._outbox.append(frame.to_json())

    def _error(
        self, message: str, error_code: str, code: int, context_id: str | None = None
    ) -> None:
        self._send(ErrorFrame(message, error_code, code, context_id, self.request_id))

    # -- fidelity: what the hosted service refuses ---------------------------------------------
    def _check_identity(self, msg: ClientMessage) -> None:
        """Refuse an unknown ``model_id``, ``voice_id`` or dictionary before anything of ``msg``
        applies (the hosted service refuses them the same way)."""
        cid = msg.context_id
        model_id = msg.config.model_id
        if model_id is not None:
            models = self.catalogue.models if self.catalogue is not None else MODELS
            if not any(m.id == model_id for m in models):
                raise RemoteProtocolError(
                    f"model_id: unknown model {model_id!r} "
                    f"(one of {', '.join(m.id for m in models)})",
                    field="model_id",
                    context_id=cid,
                )
        dictionary_ids = msg.config.dictionary_ids
        if dictionary_ids:
            # A local server has no pronunciation dictionaries: any id is unknown.
            if msg.config.project_id is None:
                message = "dictionary_ids: requires project_id"
            else:
                message = f"Dictionary not found: {', '.join(map(str, dictionary_ids))}"
            raise RemoteProtocolError(message, field="dictionary_ids", context_id=cid)
        voices = [msg.config.voice_id]
        if msg.voice_settings is not None:
            voices.append(msg.voice_settings.voice_id)
        for voice_id in voices:
            if (
                voice_id is not None
                and self.catalogue is not None
                and self.catalogue.find(voice_id) is None
            ):
                raise RemoteProtocolError(
                    "Voice not found",
                    field="voice_id",
                    error_code="NOT_FOUND",
                    code=404,
                    context_id=cid,
                )

    def _require_voice(self, config: Config, context_id: str | None = None) -> None:
        """A turn, request or context text needs a voice: the service has no default voice."""
        if config.voice_id is None and not self.lenient:
            raise RemoteProtocolError(
                "voice_id is required",
                field="voice_id",
                error_code="MISSING_VOICE_ID",
                code=400,
                context_id=context_id,
            )

    def _check_queue(self, messages: int, chars: int, text: str | None) -> None:
        """Refuse a frame that would overfill the queue waiting behind the current work."""
        limits = self.limits
        if messages >= limits.max_queued_messages or (
            chars + len(text or "") > limits.max_queued_chars
        ):
            raise RemoteProtocolError(
                f"queue full: at most {limits.max_queued_messages} messages and "
                f"{limits.max_queued_chars} characters may wait for the current "
                f"{'request' if self.endpoint == TTS_ENDPOINT else 'turn'} to finish"
            )

    def _new_work(
        self, number: int, config: Config, now: float, context_id: str | None = None
    ) -> _Work:
        enc, sr = resolve_audio_format(config)
        limits = self.limits
        chunker = Chunker(
            chunk_length_schedule=config.chunk_length_schedule or (5, 80, 150, 250),
            auto_mode=bool(config.auto_mode),
            flush_timeout_ms=500 if config.flush_timeout_ms is None else config.flush_timeout_ms,
            # the client may ask for a smaller buffer, never a larger one than the server's
            max_buffer_length=min(
                config.max_buffer_length or limits.max_buffer_length, limits.max_buffer_length
            ),
            confirm_delay_s=limits.confirm_delay_s,
        )
        return _Work(
            number,
            config,
            _params(config, enc, sr, self.temperature_default, self.catalogue),
            chunker,
            context_id,
            started_at=now,
        )

    def _accept_text(self, work: _Work, text: str, now: float) -> None:
        """Feed text (validated by the chunker; on MarkupError nothing is accepted)."""
        if work.characters + len(text) > self.limits.max_text_chars:
            raise RemoteProtocolError(
                f"text: more than {self.limits.max_text_chars} characters in this "
                f"{'context' if work.context_id else 'turn'}",
                field="text",
                context_id=work.context_id,
            )
        try:
            chunks = work.chunker.feed(text, now)
        except MarkupError as exc:
            raise RemoteProtocolError(str(exc), field="text", context_id=work.context_id) from None
        work.characters += len(text)
        self._enqueue(work, chunks, now)

    def _enqueue(self, work: _Work, chunks: Sequence[TextChunk], now: float) -> None:
        if chunks:
            work.push(chunks)
            self._pump(work, now)

    def _flush_work(self, work: _Work, now: float) -> None:
        work.flushed = True
        work.push(work.chunker.flush(now))
        self._pump(work, now)

    def _pump(self, work: _Work, now: float) -> None:
        """Hand the next chunk to the engine, or finish the cycle when all is spoken."""
        if work.job is not None or self._closed:
            return
        while work.queue:
            chunk = work.pop()
            if chunk is None:
                self._flush_mark_reached(work, now)  # its actions start no chunk
                continue
            if not chunk.text.strip() and not chunk.spells and not chunk.breaks:
                continue  # nothing to speak (whitespace between sentences)
            self._start_job(work, chunk)
            return
        if work.flushed and work.chunker.buffered_chars == 0:
            self._cycle_done(work, now)

    def _start_job(self, work: _Work, chunk: TextChunk) -> None:
        chunk_id = work.next_chunk_id
        work.next_chunk_id += 1
        work.text_chunks += 1
        ref = ChunkRef(self._serial, work.number, chunk_id, work.context_id)
        self._serial += 1
        job = _Job(ref, work, chunk)
        work.job = job
        self._jobs[ref.serial] = job
        if self.endpoint != TTS_ENDPOINT:
            self._send(GenerationStartedFrame(chunk_id, chunk.source, work.context_id))
        self._events.append(SynthesisRequested(ref, chunk, work.params))

    def _emit_audio(self, job: _Job, pcm: bytes, now: float) -> None:
        work = job.work
        enc = work.params.encoding
        if enc == "pcm_s16le":
            data = pcm
        else:
            from ._g711 import alaw_encode, ulaw_encode

            data = ulaw_encode(pcm) if enc == "mulaw" else alaw_encode(pcm)
        samples = len(pcm) // 2
        self._outbox.append(_messages.audio_frame_text(
            data, enc, work.idx, work.params.sample_rate, job.ref.chunk_id, work.context_id
        ))
        work.idx += 1
        job.samples += samples
        work.total_samples += samples
        work.audio_frames += 1
        if work.first_audio_at is None:
            work.first_audio_at = now

    def _chunk_done(self, job: _Job, gen_ms: float, now: float) -> None:
        work = job.work
        if work.params.word_timestamps:
            self._send(WordTimestampsFrame(tuple(job.words), job.ref.chunk_id, work.context_id))
        if self.endpoint != TTS_ENDPOINT:
            self._send(
                _messages.ChunkCompleteFrame(
                    job.ref.chunk_id,
                    work.audio_seconds(job.samples),
                    round(gen_ms, 3),
                    work.context_id,
                )
            )

    def _cancel_job(self, job: _Job) -> None:
        self._jobs.pop(job.ref.serial, None)
        job.work.job = None
        self._events.append(SynthesisCancelled(job.ref))

    def _drop_work(self, work: _Work) -> None:
        """Barge-in: stop the engine, drop buffered and queued text."""
        if work.job is not None:
            self._cancel_job(work.job)
        work.drop()
        work.chunker.clear()

    def _update_settings(self, msg: ClientMessage) -> None:
        assert msg.update_settings is not None
        self._config = self._config.merged(msg.update_settings.as_config())
        self._send(SettingsUpdatedFrame({k: getattr(self._config, k) for k in SETTINGS_KEYS}))

    def _finish_close(self) -> None:
        self._close_code = 1000

    def _maybe_shutdown(self) -> None:
        if self._shutdown_code is not None and not self._busy() and self._close_code is None:
            self._close_code = self._shutdown_code

    # -- endpoint specifics -------------------------------------------------------------------
    def _handle(self, msg: ClientMessage, now: float) -> None:
        raise NotImplementedError

    def _cycle_done(self, work: _Work, now: float) -> None:
        raise NotImplementedError

    def _flush_mark_reached(self, work: _Work, now: float) -> None:
        raise NotImplementedError  # only /ws/tts/multi queues flush marks

    def _deadlines(self) -> Iterator[float | None]:
        raise NotImplementedError

    def _timeout(self, now: float) -> None:
        raise NotImplementedError

    def _busy(self) -> bool:
        raise NotImplementedError


# =============================================================================================
# /ws/tts/stream


class StreamServerSession(_ServerSession):
    """Server role of ``/ws/tts/stream`` (protocol.md#turns, rulings.md#turns)."""

    endpoint = STREAM_ENDPOINT
    temperature_default = None  # unset on /ws/tts/stream (rulings.md#ruling-19)

    def _setup(self) -> None:
        self.state = ServerTurnState.IDLE
        self._turn: _Work | None = None
        self._turns = 0
        self._last_text_at = -_INF
        self._deferred: deque[ClientMessage] = deque()  # next turn's frames while draining
        self._deferred_chars = 0
        self._closing = False

    @property
    def turns_started(self) -> int:
        return self._turns

    def _works(self) -> Iterator[_Work]:
        if self._turn is not None:
            yield self._turn

    def _waiting_chars(self) -> int:
        return self._deferred_chars

    def _starts_work(self, msg: ClientMessage) -> bool:
        return self.state not in _TEXT_JOINS_TURN

    def _process(self, event: ServerTurnInput, msg: ClientMessage | None, now: float) -> None:
        """Feed ``event`` to the turn machine: next state, then the table's actions in order.
        An action that refuses the frame (:class:`RemoteProtocolError`) or declines it leaves
        the state where it was."""
        previous = self.state
        try:
            actions, self.state = SERVER_TURN_TRANSITIONS[previous, event]
        except KeyError:
            raise LocalProtocolError(
                f"turn state {previous.value} does not take {event.value}"
            ) from None
        try:
            for action in actions:
                _TURN_ACTIONS[action](self, msg, now)
        except _Declined:
            self.state = previous
        except RemoteProtocolError:
            self.state = previous
            raise

    def _handle(self, msg: ClientMessage, now: float) -> None:
        # The service's order: cancel, then update_settings, then the frame's turn inputs.
        if msg.cancel:
            self._process(ServerTurnInput.CANCEL, msg, now)
        elif msg.update_settings is not None:
            self._update_settings(msg)
        else:
            for event in _turn_inputs(msg):
                self._process(event, msg, now)

    # -- the turn machine's actions (SERVER_TURN_TRANSITIONS) ---------------------------------
    def _start(self, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None and msg.text is not None
        if self._shutdown_code is not None:
            raise _Declined  # a restarting server starts nothing new; the client replays it
        config = self._config.merged(msg.config)
        self._require_voice(config)
        turn = self._new_work(self._turns, config, now)
        self._accept_text(turn, msg.text, now)  # raises before anything is applied
        self._config = config
        self._turns += 1
        self._turn = turn
        self._last_text_at = now

    def _add_text(self, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None and msg.text is not None and self._turn is not None
        self._accept_text(self._turn, msg.text, now)
        # Identity/format changes mid-turn apply from the next turn (rulings.md#ruling-10).
        self._config = self._config.merged(msg.config)
        self._last_text_at = now

    def _merge_config(self, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None
        self._config = self._config.merged(msg.config)

    def _flush(self, msg: ClientMessage | None, now: float) -> None:
        assert self._turn is not None
        self._flush_work(self._turn, now)

    def _warn_idle(self, msg: ClientMessage | None, now: float) -> None:
        self._send(WarningFrame(IDLE_WARNING))

    def _queue(self, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None
        if self._deferred and self._deferred[-1] is msg:
            return  # the frame's first input queued it already (a frame waits whole)
        self._check_queue(len(self._deferred), self._deferred_chars, msg.text)
        self._deferred.append(msg)
        self._deferred_chars += len(msg.text or "")

    def _cancel(self, msg: ClientMessage | None, now: float) -> None:
        if self._turn is not None:
            self._drop_work(self._turn)
        self._deferred.clear()
        self._deferred_chars = 0
        self._turn = None
        self._send(InterruptedFrame())
        if self._closing:
            self._send(SessionClosedFrame(0.0, 0, 0))
            self._finish_close()
        self._maybe_shutdown()

    def _close(self, msg: ClientMessage | None, now: float) -> None:
        self._send(SessionClosedFrame(0.0, 0, 0))
        self._finish_close()

    def _close_after(self, msg: ClientMessage | None, now: float) -> None:
        self._closing = True

    def _queue_close(self, msg: ClientMessage | None, now: float) -> None:
        if self._deferred:
            self._queue(msg, now)  # the close applies after the frames before it
        else:
            self._closing = True

    def _finish(self, msg: ClientMessage | None, now: float) -> None:
        turn = self._turn
        assert turn is not None
        secs = turn.audio_seconds()
        self._send(
            FinalFrame(
                total_audio_seconds=secs,
                total_text_chunks=turn.text_chunks,
                total_audio_chunks=turn.audio_frames,
            )
        )
        self._send(SessionClosedFrame(secs, turn.text_chunks, turn.audio_frames, turn.usage()))
        self._turn = None
        if self._closing:
            self._finish_close()
            return
        # The waiting frames apply in order until one of them makes the next turn wait.
        while self._deferred and self.state not in _WAITING:
            if self._close_code is not None:
                break
            msg = self._deferred.popleft()
            self._deferred_chars -= len(msg.text or "")
            try:
                self._handle(msg, now)
            except RemoteProtocolError as exc:
                self._error(exc.message, exc.error_code, exc.code, exc.context_id)
        self._maybe_shutdown()

    def _cycle_done(self, work: _Work, now: float) -> None:
        self._process(ServerTurnInput.DRAINED, None, now)

    def _busy(self) -> bool:
        return self._turn is not None or bool(self._deferred)

    def _idle_timer_runs(self) -> bool:
        """The idle auto-flush timer runs in the states that take its input."""
        return (self.state, ServerTurnInput.IDLE_TIMEOUT) in SERVER_TURN_TRANSITIONS

    def _deadlines(self) -> Iterator[float | None]:
        turn = self._turn
        if turn is None:
            return
        yield turn.chunker.next_deadline()
        if self._idle_timer_runs():
            yield self._last_text_at + self.limits.idle_flush_s

    def _timeout(self, now: float) -> None:
        turn = self._turn
        if turn is None:
            return
        self._enqueue(turn, turn.chunker.handle_timeout(now), now)
        if self._idle_timer_runs() and now >= self._last_text_at + self.limits.idle_flush_s:
            self._process(ServerTurnInput.IDLE_TIMEOUT, None, now)


class _Declined(Exception):
    """Raised by a turn action that drops its frame: the machine stays where it was."""


_TI, _TA = ServerTurnInput, ServerTurnAction
#: What a client frame (neither ``cancel`` nor ``update_settings``) is to the turn machine,
#: by (non-empty text, config fields, flush or close); ``close_socket`` by (non-empty text,).
_TURN_FRAME_INPUTS: dict[tuple[bool, bool, bool], tuple[ServerTurnInput, ...]] = {
    (False, False, False): (),
    (False, False, True): (_TI.FLUSH,),
    (False, True, False): (_TI.CONFIG,),
    (False, True, True): (_TI.CONFIG, _TI.FLUSH),
    (True, False, False): (_TI.TEXT,),  # text carries its config (START / ADD_TEXT)
    (True, False, True): (_TI.TEXT, _TI.FLUSH),
}
_CLOSE_SOCKET_INPUTS: dict[bool, tuple[ServerTurnInput, ...]] = {
    False: (_TI.CLOSE_SOCKET,),
    True: (_TI.TEXT, _TI.CLOSE_SOCKET),  # its config and flush are not looked at
}


def _turn_inputs(msg: ClientMessage) -> tuple[ServerTurnInput, ...]:
    if msg.close_socket:
        return _CLOSE_SOCKET_INPUTS[bool(msg.text)]
    text = bool(msg.text)
    config = not text and not msg.config.is_empty()
    return _TURN_FRAME_INPUTS[text, config, msg.flush or msg.close]


_TurnAction = Callable[[StreamServerSession, ClientMessage | None, float], None]
_TURN_ACTIONS: dict[ServerTurnAction, _TurnAction] = {
    _TA.START: StreamServerSession._start,
    _TA.ADD_TEXT: StreamServerSession._add_text,
    _TA.CONFIG: StreamServerSession._merge_config,
    _TA.FLUSH: StreamServerSession._flush,
    _TA.WARN_IDLE: StreamServerSession._warn_idle,
    _TA.QUEUE: StreamServerSession._queue,
    _TA.CANCEL: StreamServerSession._cancel,
    _TA.CLOSE: StreamServerSession._close,
    _TA.CLOSE_AFTER: StreamServerSession._close_after,
    _TA.QUEUE_CLOSE: StreamServerSession._queue_close,
    _TA.FINISH: StreamServerSession._finish,
}
#: States in which a client frame waits for the next turn / in which text joins the turn
#: (read off the table).
_WAITING = frozenset(
    s for (s, i), (acts, _) in SERVER_TURN_TRANSITIONS.items() if acts == (_TA.QUEUE,)
)
_TEXT_JOINS_TURN = frozenset(
    s for (s, i), (acts, _) in SERVER_TURN_TRANSITIONS.items()
    if i is _TI.TEXT and acts == (_TA.ADD_TEXT,)
)


# =============================================================================================
# /ws/tts/multi


@dataclass(slots=True)
class _Context:
    work: _Work
    last_activity: float
    timeout_s: float
    state: ServerContextState = ServerContextState.OPEN
    pending_finals: int = 0  # flushes whose final is still owed


class MultiServerSession(_ServerSession):
    """Server role of ``/ws/tts/multi`` (protocol.md#multi, rulings.md#multi)."""

    endpoint = MULTI_ENDPOINT

    def _setup(self) -> None:
        self._contexts: dict[str, _Context] = {}
        # Tombstones: ids of contexts closed on this socket (most recent last, bounded), so a
        # close or cancel that crossed the context_closed on the wire is dropped, not an error.
        self._closed_ids: dict[str, None] = {}
        self._closing = False
        self._total_samples_s = 0.0
        #: Client frames ignored because they named a context already closed (tombstoned).
        self.late_frames = 0

    @property
    def contexts(self) -> tuple[str, ...]:
        return tuple(self._contexts)

    def context_state(self, context_id: str) -> ServerContextState:
        """The state of context ``context_id``: ``IDLE`` if never seen, ``CLOSED`` if gone."""
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            return ctx.state
        if context_id in self._closed_ids:
            return ServerContextState.CLOSED
        return ServerContextState.IDLE

    def _process(
        self, cid: str, event: ServerContextInput, msg: ClientMessage | None, now: float
    ) -> None:
        """Feed ``event`` to context ``cid``'s machine: next state, then the table's actions.
        A context that does not exist is ``IDLE`` (never seen) or ``CLOSED`` (tombstoned)."""
        ctx = self._contexts.get(cid)
        state = self.context_state(cid)
        entry = SERVER_CONTEXT_TRANSITIONS.get((state, event))
        if entry is None:
            if event in SERVER_CONTEXT_LOCAL_INPUTS:
                raise LocalProtocolError(
                    f"context state {state.value} does not take {event.value}"
                )
            raise RemoteProtocolError(
                _REFUSALS[state].format(cid), field="context_id", context_id=cid
            )
        actions, new = entry
        if ctx is not None:
            ctx.state = new
        for action in actions:
            _CONTEXT_ACTIONS[action](self, cid, msg, now)

    def _handle(self, msg: ClientMessage, now: float) -> None:
        if msg.close_socket:
            self._close_socket(now)
            return
        if self._closing:
            raise RemoteProtocolError("close_socket was received; no more input is accepted")
        if msg.cancel:
            self._cancel(msg.context_id, msg, now)
            return
        if msg.update_settings is not None:
            self._update_settings(msg)
            return
        cid = msg.context_id
        if cid is None:
            # The LiveKit config-only frame (no context) only updates session config.
            if not msg.config.is_empty():
                self._config = self._config.merged(msg.config)
            if msg.text or msg.flush or msg.close_context:
                raise RemoteProtocolError(
                    "context_id is required on /ws/tts/multi", field="context_id"
                )
            return
        if not msg.config.is_empty() and cid in self._contexts:
            self._config = self._config.merged(msg.config)  # session-wide, for later contexts
        for event in _context_inputs(msg):
            self._process(cid, event, msg, now)

    # -- the context machine's actions (SERVER_CONTEXT_TRANSITIONS) ---------------------------
    def _create_action(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None
        self._closed_ids.pop(cid, None)  # text reuses the id: a new context
        self._create(msg, now)

    def _add_text(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        assert msg is not None and msg.text is not None
        ctx = self._contexts[cid]
        ctx.last_activity = now
        if msg.text.strip():
            # a context created without voice_settings.voice_id is voiceless
            self._require_voice(ctx.work.config, cid)
        self._accept_text(ctx.work, msg.text, now)

    def _flush(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        ctx = self._contexts[cid]
        ctx.pending_finals += 1  # _flush_work's pump restarts the inactivity timer
        self._flush_work(ctx.work, now)

    def _touch(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        self._contexts[cid].last_activity = now

    def _abandon(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        ctx = self._contexts[cid]
        work = ctx.work
        self._drop_work(work)
        ctx.pending_finals = 0
        self._new_cycle(work)
        work.chunker.new_cycle()

    def _final(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        ctx = self._contexts[cid]
        if ctx.pending_finals:
            ctx.pending_finals -= 1
            self._send(FinalFrame(context_id=cid))
        self._new_cycle(ctx.work)
        ctx.last_activity = now

    def _drop(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        self._drop_work(self._contexts[cid].work)

    def _timed_out(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        self._send(_messages.ContextTimeoutFrame(cid))

    def _close_ctx(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        self._closed_context(self._contexts[cid])

    def _late(self, cid: str, msg: ClientMessage | None, now: float) -> None:
        self.late_frames += 1

    def _create(self, msg: ClientMessage, now: float) -> _Context:
        cid = msg.context_id
        assert cid is not None
        if len(self._contexts) >= self.limits.max_contexts:
            raise RemoteProtocolError(
                "Too many concurrent contexts",
                error_code="TOO_MANY_CONTEXTS",
                code=429,
                context_id=cid,
            )
        self._config = self._config.merged(msg.config)
        config = self._config
        vs = msg.voice_settings
        # The voice is bound only from voice_settings; per-context overrides win
        # (protocol.md#multi-messages).
        config = dataclasses.replace(
            config,
            voice_id=None if vs is None else vs.voice_id,
            cfg_scale=(vs and vs.cfg_scale) or config.cfg_scale,
            max_new_tokens=(vs and vs.max_new_tokens) or config.max_new_tokens,
        )
        timeout = config.inactivity_timeout or self.limits.context_timeout_s
        timeout = min(timeout, self.limits.max_context_timeout_s)
        ctx = _Context(self._new_work(0, config, now, cid), now, timeout)
        self._contexts[cid] = ctx
        self._send(_messages.ContextCreatedFrame(cid))
        return ctx

    def _cancel(self, context_id: str | None, msg: ClientMessage, now: float) -> None:
        """Barge-in on one context, or on every context without ``context_id``."""
        for cid in (context_id,) if context_id is not None else tuple(self._contexts):
            self._process(cid, ServerContextInput.CANCEL, msg, now)
        self._send(InterruptedFrame(context_id))

    def _new_cycle(self, work: _Work) -> None:
        work.number += 1
        work.idx = 0

    def _flush_work(self, work: _Work, now: float) -> None:
        """A context's flush: what is buffered becomes chunks, then a flush mark. The ``final``
        is sent when the mark is reached, i.e. right after this flush's own audio, even when
        later text of the context is already queued behind it
        (protocol.md#context-flush-and-close)."""
        work.push(work.chunker.flush(now))
        work.push((None,))
        work.chunker.new_cycle()  # text from now on is the next cycle's: the schedule restarts
        self._pump(work, now)

    def _closed_context(self, ctx: _Context) -> None:
        work = ctx.work
        cid = work.context_id
        assert cid is not None
        del self._contexts[cid]
        self._closed_ids[cid] = None
        if len(self._closed_ids) > _MAX_TOMBSTONES:
            del self._closed_ids[next(iter(self._closed_ids))]
        self._total_samples_s += work.audio_seconds()
        self._send(_messages.ContextClosedFrame(cid, work.usage() if work.total_samples else None))
        if self._closing and not self._contexts:
            self._send(SessionClosedFrame(round(self._total_samples_s, 6)))
            self._finish_close()

    def _flush_mark_reached(self, work: _Work, now: float) -> None:
        cid = work.context_id
        assert cid is not None  # the work of an open context: a closed one's queue is empty
        event = ServerContextInput.FLUSH_DONE if work.queue else ServerContextInput.DRAINED
        self._process(cid, event, None, now)
        self._maybe_shutdown()

    def _close_socket(self, now: float) -> None:
        self._closing = True
        if not self._contexts:
            self._send(SessionClosedFrame(round(self._total_samples_s, 6)))
            self._finish_close()
            return
        for cid in tuple(self._contexts):
            self._process(cid, ServerContextInput.CLOSE, None, now)

    def _busy(self) -> bool:
        return any(c.work.busy or c.pending_finals for c in self._contexts.values())

    def _maybe_shutdown(self) -> None:
        if self._shutdown_code is not None and not self._busy() and self._close_code is None:
            # session_closed precedes a server-initiated graceful close (rulings.md#ruling-17).
            self._send(SessionClosedFrame(round(self._total_samples_s, 6)))
            self._close_code = self._shutdown_code

    def _works(self) -> Iterator[_Work]:
        for ctx in self._contexts.values():
            yield ctx.work

    def _starts_work(self, msg: ClientMessage) -> bool:
        return msg.context_id not in self._contexts

    def _deadlines(self) -> Iterator[float | None]:
        for ctx in self._contexts.values():
            yield ctx.work.chunker.next_deadline()
            if not ctx.work.busy:
                yield ctx.last_activity + ctx.timeout_s

    def _timeout(self, now: float) -> None:
        for ctx in list(self._contexts.values()):
            work = ctx.work
            self._enqueue(work, work.chunker.handle_timeout(now), now)
            if not work.busy and now >= ctx.last_activity + ctx.timeout_s:
                cid = work.context_id
                assert cid is not None
                self._process(cid, ServerContextInput.TIMEOUT, None, now)

    def _pump(self, work: _Work, now: float) -> None:
        # Only an open context's work is pumped: closing drops the queue and cancels the job.
        cid = work.context_id
        assert cid is not None
        self._contexts[cid].last_activity = now
        super()._pump(work, now)


_CI, _CA = ServerContextInput, ServerContextAction
#: A frame naming a context (neither ``cancel`` nor ``update_settings``) as the context
#: machine's inputs, by (non-empty text, flush); the rest by ``close_context`` / ``keep_alive``.
_CONTEXT_FRAME_INPUTS: dict[tuple[bool, bool], tuple[ServerContextInput, ...]] = {
    (True, False): (_CI.TEXT,),
    (True, True): (_CI.TEXT, _CI.FLUSH),
    (False, True): (_CI.FLUSH,),
}
_CLOSE_CONTEXT_INPUTS = {False: (_CI.CLOSE,), True: (_CI.CLOSE_IMMEDIATE,)}
_NOTHING_TO_SAY_INPUTS = {False: (_CI.INIT,), True: (_CI.KEEP_ALIVE,)}


def _context_inputs(msg: ClientMessage) -> tuple[ServerContextInput, ...]:
    if msg.close_context:
        return _CLOSE_CONTEXT_INPUTS[msg.immediate]
    inputs = _CONTEXT_FRAME_INPUTS.get((bool(msg.text), msg.flush))
    return inputs if inputs is not None else _NOTHING_TO_SAY_INPUTS[msg.keep_alive]


#: Why a client input a context's state does not take is refused (``OPEN`` and ``CLOSED`` take
#: every client input).
_REFUSALS = {
    ServerContextState.IDLE: "unknown context {!r}",
    ServerContextState.CLOSING: "context {!r} is closing",
}
_ContextAction = Callable[[MultiServerSession, str, ClientMessage | None, float], None]
_CONTEXT_ACTIONS: dict[ServerContextAction, _ContextAction] = {
    _CA.CREATE: MultiServerSession._create_action,
    _CA.ADD_TEXT: MultiServerSession._add_text,
    _CA.FLUSH: MultiServerSession._flush,
    _CA.TOUCH: MultiServerSession._touch,
    _CA.ABANDON: MultiServerSession._abandon,
    _CA.FINAL: MultiServerSession._final,
    _CA.DROP: MultiServerSession._drop,
    _CA.TIMED_OUT: MultiServerSession._timed_out,
    _CA.CLOSED: MultiServerSession._close_ctx,
    _CA.LATE: MultiServerSession._late,
}


# =============================================================================================
# /ws/tts


@dataclass(slots=True)
class _Request:
    """One ``/ws/tts`` request: its text and config overrides, then its work."""

    text: str
    overrides: Config
    state: ServerRequestState = ServerRequestState.QUEUED
    work: _Work | None = None
    error: ProtocolError | None = None


class TTSServerSession(_ServerSession):
    """Server role of ``/ws/tts``: one request at a time, the rest queued in order
    (rulings.md#ruling-21).

    A request ends with ``final`` (stats + usage), ``interrupted`` (cancel) or one error frame.
    """

    endpoint = TTS_ENDPOINT

    def _setup(self) -> None:
        self._queue: deque[_Request] = deque()
        self._queued_chars = 0
        self._current: _Request | None = None
        self._requests = 0

    def _works(self) -> Iterator[_Work]:
        if self._current is not None and self._current.work is not None:
            yield self._current.work

    def _waiting_chars(self) -> int:
        return self._queued_chars

    def _process(self, request: _Request, event: ServerRequestInput, now: float) -> None:
        """Feed ``event`` to ``request``'s machine: next state, then the table's actions."""
        try:
            actions, request.state = SERVER_REQUEST_TRANSITIONS[request.state, event]
        except KeyError:
            raise LocalProtocolError(
                f"request state {request.state.value} does not take {event.value}"
            ) from None
        for action in actions:
            _REQUEST_ACTIONS[action](self, request, now)

    def _handle(self, msg: ClientMessage, now: float) -> None:
        if msg.cancel:
            if self._current is not None:
                self._process(self._current, ServerRequestInput.CANCEL, now)
            self._send(InterruptedFrame())
            self._start_next(now)
            return
        if msg.update_settings is not None:
            self._update_settings(msg)
            return
        if msg.text is None:
            if msg.close_socket:
                self._finish_close()
            return
        if self._current is not None or self._queue:
            self._check_queue(len(self._queue), self._queued_chars, msg.text)
        self._queue.append(_Request(msg.text, msg.config))
        self._queued_chars += len(msg.text)
        self._start_next(now)

    def _start_next(self, now: float) -> None:
        if self._current is None and self._shutdown_code is not None:
            # A restarting server starts nothing new (protocol.md#lifecycle): the requests not
            # started have no audio, so the client replays them after reconnecting.
            self._queue.clear()
            self._queued_chars = 0
        while self._current is None and self._queue:
            request = self._queue.popleft()
            self._queued_chars -= len(request.text)
            try:
                request.work = self._prepare(request, now)
            except ProtocolError as exc:
                request.error = exc
                self._process(request, ServerRequestInput.INVALID, now)
                continue
            self._process(request, ServerRequestInput.START, now)
        self._maybe_shutdown()

    def _prepare(self, request: _Request, now: float) -> _Work:
        """The request's work, text accepted; raises if the request is refused."""
        text = request.text
        if not text.strip():
            raise RemoteProtocolError("text required", field="text")
        if len(text) > self.limits.max_request_chars:
            raise RemoteProtocolError(
                f"text: at most {self.limits.max_request_chars} characters", field="text"
            )
        config = self._config.merged(request.overrides)
        self._require_voice(config)
        work = self._new_work(self._requests, config, now)
        self._accept_text(work, text, now)
        return work

    # -- the request machine's actions (SERVER_REQUEST_TRANSITIONS) ---------------------------
    def _speak(self, request: _Request, now: float) -> None:
        assert request.work is not None
        self._requests += 1
        self._current = request
        self._flush_work(request.work, now)

    def _refuse(self, request: _Request, now: float) -> None:
        exc = request.error
        assert exc is not None
        self._error(exc.message, exc.error_code, exc.code)

    def _final(self, request: _Request, now: float) -> None:
        work = request.work
        assert work is not None
        dur_ms = round(work.total_samples * 1000 / work.params.sample_rate, 3)
        gen_ms = round(work.gen_ms, 3)
        ttfa = (
            None
            if work.first_audio_at is None
            else round((work.first_audio_at - work.started_at) * 1000, 3)
        )
        self._send(
            FinalFrame(
                chunks=work.audio_frames,
                total_samples=work.total_samples,
                dur_ms=dur_ms,
                gen_ms=gen_ms,
                rtf=round(gen_ms / dur_ms, 4) if dur_ms else 0.0,
                debug={
                    "original_text": request.text,  # a request's text is fed at once
                    "ttfa_ms": ttfa,
                    "speed": work.params.speed,
                },
                usage=work.usage(),
            )
        )
        self._current = None

    def _drop(self, request: _Request, now: float) -> None:
        assert request.work is not None
        self._drop_work(request.work)
        self._current = None

    def _cycle_done(self, work: _Work, now: float) -> None:
        current = self._current
        # only the request being spoken is flushed (a cancelled one's chunk is no longer pumped)
        assert current is not None
        self._process(current, ServerRequestInput.SPOKEN, now)
        self._start_next(now)

    def _busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def _deadlines(self) -> Iterator[float | None]:
        return iter(())

    def _timeout(self, now: float) -> None:
        return None


_RA = ServerRequestAction
_RequestAction = Callable[[TTSServerSession, _Request, float], None]
_REQUEST_ACTIONS: dict[ServerRequestAction, _RequestAction] = {
    _RA.SPEAK: TTSServerSession._speak,
    _RA.REFUSE: TTSServerSession._refuse,
    _RA.FINAL: TTSServerSession._final,
    _RA.DROP: TTSServerSession._drop,
}
