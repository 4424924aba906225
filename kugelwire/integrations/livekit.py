"""A LiveKit Agents TTS plugin on kugelwire (extra ``kugelwire[livekit]``).

:class:`TTS` is a ``livekit.agents.tts.TTS`` that speaks ``/ws/tts/multi`` through
:func:`kugelwire.transports.asyncio.connect_multi`::

    session = AgentSession(tts=TTS(api_key=KEY, voice_id=1071), ...)

* **One connection, reused**: every ``synthesize()`` and ``stream()`` of a ``TTS`` shares one
  socket (up to 20 concurrent streams), opened by :meth:`TTS.prewarm` or the first stream and
  re-opened after a drop; a rolling restart (close 1012/1013) is bridged by the client itself.
* **One context per stream**: tokens are sent as they are pushed, unflushed; each ``flush()``
  (and ``end_input()``) flushes once; ``aclose()`` (barge-in) closes the context at once, and no
  more of its audio is emitted.
* **Aligned transcripts** (``TTSCapabilities(aligned_transcript=True)``): word timestamps as
  ``TimedString`` in seconds since the start of the stream's audio, across sentences.
* :meth:`TTS.update_options` changes voice, language, speed, temperature, ``cfg_scale`` and
  ``normalize`` without reconnecting (they apply to the next stream); a new model reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from . import missing_framework

try:
    from livekit import rtc
    from livekit.agents import (
        DEFAULT_API_CONNECT_OPTIONS,
        NOT_GIVEN,
        APIConnectionError,
        APIConnectOptions,
        APIStatusError,
        APITimeoutError,
        tts,
        utils,
    )
    from livekit.agents.voice.io import TimedString
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_framework("livekit", "LiveKit Agents") from exc

from ..errors import (
    AuthenticationError,
    KugelwireError,
    LocalProtocolError,
    RateLimitError,
    ServerErrorResponse,
)
from ..protocol.events import AudioChunk, ContextClosed, ServerError, TurnFinal, WordTimestamps
from ..transports.asyncio import AsyncContext, AsyncMulti, connect_multi
from . import DEFAULT_URL, ServiceOptions, audio_format, language_code
from . import voice_id as _voice_id

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]


@dataclass
class _Options(ServiceOptions):
    """The constructor's options; the generation settings change with ``update_options``."""

    language: str | None = None
    model_id: str | None = None
    speed: float | None = None
    temperature: float | None = None
    cfg_scale: float | None = None  # travels with each context, not on the connection
    normalize: bool | None = None

    def config(self, sample_rate: int) -> dict[str, Any]:
        settings = {
            "language": self.language, "model_id": self.model_id, "speed": self.speed,
            "temperature": self.temperature, "normalize": self.normalize,
        }
        return self.connect_kwargs(sample_rate, settings)[0]


def _api_error(exc: BaseException) -> Any:
    """The LiveKit error for a kugelwire one (LiveKit retries the retryable ones)."""
    if isinstance(exc, AuthenticationError):
        return APIStatusError(str(exc), status_code=exc.status_code or 401, retryable=False)
    if isinstance(exc, RateLimitError):
        return APIStatusError(str(exc), status_code=429, retryable=True)
    if isinstance(exc, ServerErrorResponse):
        return APIStatusError(str(exc), status_code=exc.status or 500)
    if isinstance(exc, asyncio.TimeoutError):
        return APITimeoutError()
    return APIConnectionError(str(exc))


class TTS(tts.TTS):
    """KugelAudio TTS for LiveKit Agents (see the module docstring).

    ``voice_id``: the voice; ``url``: the service or ``ws://127.0.0.1:PORT`` of ``kugelwire
    serve``; ``language``: ISO 639-1 code; ``sample_rate``: the rate of the emitted audio (the
    server's closest rate is requested and resampled when needed); ``encoding``: ``"pcm"``, or
    ``"mulaw"`` / ``"alaw"`` for 8 kHz G.711 from the server (telephony; frames stay PCM16);
    ``word_timestamps``: aligned transcripts; ``speed``, ``temperature``, ``cfg_scale``,
    ``normalize``, ``model_id``: generation settings; ``keepalive_interval``: seconds of quiet
    after which an open context is kept alive; ``connect_options``: more keyword arguments for
    :func:`~kugelwire.transports.asyncio.connect_multi`.
    """

    def __init__(
        self,
        *,
        api_key: str,
        voice_id: int | str,
        url: str = DEFAULT_URL,
        language: str | None = None,
        sample_rate: int = 24000,
        encoding: Literal["pcm", "mulaw", "alaw"] = "pcm",
        word_timestamps: bool = True,
        model_id: str | None = None,
        speed: float | None = None,
        temperature: float | None = None,
        cfg_scale: float | None = None,
        normalize: bool | None = None,
        keepalive_interval: float = 10.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=word_timestamps),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._api_key, self._url = api_key, url
        self._opts = _Options(
            voice_id, encoding, word_timestamps, keepalive_interval, connect_options or {},
            language=language_code(language) if language else None, model_id=model_id,
            speed=speed, temperature=temperature, cfg_scale=cfg_scale, normalize=normalize,
        )
        self._multi: AsyncMulti | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, Any] = {}  # update_settings for the next stream
        self._stale = False  # the connection's fixed config changed: open a new one
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def model(self) -> str:
        return self._opts.model_id or "unknown"

    @property
    def provider(self) -> str:
        return "KugelAudio"

    @property
    def wire_sample_rate(self) -> int:
        """The sample rate the server sends (the emitted audio is resampled from it)."""
        return audio_format(self._opts.encoding, self.sample_rate)[1]

    def prewarm(self) -> None:
        """Open the connection now, in the background (the first stream pays no handshake);
        outside a running event loop the first stream connects instead."""
        with contextlib.suppress(RuntimeError):  # no running loop
            self._spawn(self._connection(DEFAULT_API_CONNECT_OPTIONS.timeout))

    def update_options(
        self,
        *,
        voice_id: Any = NOT_GIVEN,
        language: Any = NOT_GIVEN,
        speed: Any = NOT_GIVEN,
        temperature: Any = NOT_GIVEN,
        cfg_scale: Any = NOT_GIVEN,
        normalize: Any = NOT_GIVEN,
        model_id: Any = NOT_GIVEN,
    ) -> None:
        """Change options for the streams started from now on. Voice and ``cfg_scale`` travel
        with each new context; language, speed, temperature and ``normalize`` are sent as one
        ``update_settings`` on the open connection; only a new ``model_id`` reconnects."""
        if utils.is_given(voice_id):
            self._opts.voice_id = _voice_id(voice_id)
        if utils.is_given(cfg_scale):
            self._opts.cfg_scale = cfg_scale
        if utils.is_given(language):
            language = language_code(language)
        live = {"language": language, "speed": speed, "temperature": temperature,
                "normalize": normalize}
        for key, value in live.items():
            if utils.is_given(value) and value is not None:
                setattr(self._opts, key, value)
                self._pending[key] = value
        if utils.is_given(model_id) and model_id != self._opts.model_id:
            self._opts.model_id = model_id
            self._stale = True

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        multi, self._multi = self._multi, None
        if multi is not None:
            await multi.close()
        for task in list(self._tasks):
            task.cancel()

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, timeout: float) -> AsyncMulti:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a connection belongs to the loop that opened it
            self._loop, self._multi, self._lock = loop, None, asyncio.Lock()
        async with self._lock:
            multi = self._multi
            if multi is not None and self._stale and not multi.closed:
                self._spawn(multi.close())  # drains its streams, then closes
            if multi is None or multi.closed or self._stale:
                self._multi = None
                config = self._opts.config(self.sample_rate)
                multi = await connect_multi(
                    self._url, api_key=self._api_key, connect_timeout=timeout, **config
                )
                self._multi, self._stale = multi, False
                self._pending.clear()  # the new connection's config has them
            elif self._pending:
                await multi.update_settings(**self._pending)
                self._pending.clear()
            return multi

    async def _open_context(self, context_id: str, timeout: float) -> AsyncContext:
        multi = await self._connection(timeout)
        return await multi.create_context(
            context_id, voice_id=self._opts.voice_id, cfg_scale=self._opts.cfg_scale
        )


class _Speaker:
    """One stream's context: text out, audio and timed words into the emitter."""

    def __init__(self, tts: TTS, emitter: Any, ctx: AsyncContext, *, streaming: bool) -> None:
        self._tts, self._emitter, self._ctx = tts, emitter, ctx
        self._streaming = streaming
        self.flushes = 0  # flush-cycles sent
        self.finals = 0  # flush-cycles finished
        self.input_done = asyncio.Event()
        self.done = False
        self._elapsed = 0.0  # audio seconds of the finished cycles (the transcript's offset)
        self._cycle = 0.0
        wire = tts.wire_sample_rate
        self._resampler = (
            rtc.AudioResampler(wire, tts.sample_rate, num_channels=1)
            if wire != tts.sample_rate else None
        )

    async def send(self, text: str) -> None:
        await self._ctx.send_text(text)

    async def flush(self) -> None:
        self.flushes += 1
        await self._ctx.flush()

    async def receive(self) -> None:
        """Emit the context's output until its last flush-cycle ended and it closed."""
        async for event in self._ctx:
            if isinstance(event, AudioChunk):
                self._audio(event)
            elif isinstance(event, WordTimestamps) and self._tts._opts.word_timestamps:
                off = self._elapsed
                self._emitter.push_timed_transcript([
                    TimedString(w.word + " ", start_time=off + w.start_ms / 1000.0,
                                end_time=off + w.end_ms / 1000.0)
                    for w in event.turn_words
                ])
            elif isinstance(event, TurnFinal) and self.finals < self.flushes:
                self._flush_resampler()
                self.finals += 1
                self._elapsed += self._cycle
                self._cycle = 0.0
                if self._streaming:
                    self._emitter.end_segment()
                await self._maybe_close()
            elif isinstance(event, ServerError):
                raise APIStatusError(f"{event.error_code.value}: {event.message}",
                                     status_code=event.status or 500)
            elif isinstance(event, ContextClosed):
                self.done = True
                return

    async def _maybe_close(self) -> None:
        if self.input_done.is_set() and self.finals >= self.flushes and not self.done:
            self.done = True  # graceful: nothing is left to speak
            await self._ctx.close()

    async def end_input(self) -> None:
        self.input_done.set()
        await self._maybe_close()

    async def abort(self) -> None:
        """Barge-in: close the context at once (no more audio of it is emitted)."""
        if not self._ctx.done:
            with contextlib.suppress(KugelwireError, LocalProtocolError):
                await self._ctx.close(immediate=True)

    def _audio(self, event: AudioChunk) -> None:
        self._cycle += event.duration_s
        pcm = event.pcm16()
        if self._resampler is None:
            self._emitter.push(pcm)
            return
        frame = rtc.AudioFrame(pcm, event.sample_rate, 1, len(pcm) // 2)
        for out in self._resampler.push(frame):
            self._emitter.push(out.data.tobytes())

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.flush():
                self._emitter.push(out.data.tobytes())
            wire = self._tts.wire_sample_rate
            self._resampler = rtc.AudioResampler(wire, self._tts.sample_rate, num_channels=1)


@contextlib.asynccontextmanager
async def _speaker(stream: _Stream, emitter: Any, *, streaming: bool) -> Any:
    """A fresh context for one stream, closed at once unless it finished by itself."""
    tts, timeout = stream._tts, stream._conn_options.timeout
    context_id = utils.shortuuid()
    emitter.initialize(request_id=context_id, sample_rate=tts.sample_rate, num_channels=1,
                       mime_type="audio/pcm", stream=streaming)
    try:
        ctx = await asyncio.wait_for(tts._open_context(context_id, timeout), timeout)
    except (KugelwireError, asyncio.TimeoutError) as exc:
        raise _api_error(exc) from exc
    speaker = _Speaker(tts, emitter, ctx, streaming=streaming)
    try:
        yield speaker
    except (KugelwireError, asyncio.TimeoutError) as exc:
        raise _api_error(exc) from exc
    finally:
        if not speaker.done:
            await speaker.abort()


class _Stream:
    """What :func:`_speaker` needs of a stream (both kinds are livekit streams of a TTS)."""

    _tts: TTS
    _conn_options: APIConnectOptions


class ChunkedStream(_Stream, tts.ChunkedStream):
    """``TTS.synthesize(text)``: the whole text as one flush-cycle of a fresh context."""

    async def _run(self, output_emitter: Any) -> None:
        async with _speaker(self, output_emitter, streaming=False) as speaker:
            if self._input_text.strip():
                await speaker.send(self._input_text)
                await speaker.flush()
            await speaker.end_input()
            if speaker.flushes:
                await speaker.receive()


class SynthesizeStream(_Stream, tts.SynthesizeStream):
    """``TTS.stream()``: pushed text streams into one context; each flush ends a segment."""

    async def _run(self, output_emitter: Any) -> None:
        async with _speaker(self, output_emitter, streaming=True) as speaker:

            async def forward_input() -> None:
                pending = False  # text sent since the last flush
                async for data in self._input_ch:
                    if isinstance(data, self._FlushSentinel):
                        if pending:
                            pending = False
                            await speaker.flush()
                        continue
                    if not pending:
                        pending = True
                        output_emitter.start_segment(segment_id=utils.shortuuid())
                        self._mark_started()
                    await speaker.send(data)
                if pending:
                    await speaker.flush()
                await speaker.end_input()

            sender = asyncio.create_task(forward_input())
            try:
                await speaker.receive()
                await sender
            finally:
                await utils.aio.gracefully_cancel(sender)

