"""A Pipecat TTS service on kugelwire (extra ``kugelwire[pipecat]``).

:class:`KugelwireTTSService` is a Pipecat ``WebsocketTTSService`` that speaks ``/ws/tts/multi``
through :func:`kugelwire.transports.asyncio.connect_multi`::

    tts = KugelwireTTSService(api_key=KEY, voice_id=1071)      # or url="ws://127.0.0.1:8765"
    pipeline = Pipeline([..., llm, tts, transport.output()])

* **One context per Pipecat turn context.** Text reaches the context as it arrives (LLM tokens,
  or sentences in sentence mode), never flushed in between; the end of the LLM response (or of a
  ``TTSSpeakFrame``) flushes it exactly once, and its ``final`` closes it, so the server never
  holds more than the contexts actually speaking.
* **Barge-in**: an interruption closes the interrupted contexts at once (``immediate``); no audio
  of them reaches the pipeline afterwards.
* **Word timestamps** go into Pipecat's word-timestamp machinery (``add_word_timestamps``) in
  seconds since the start of the turn's audio, so transcripts and word sync follow the speech.
* **Connection**: opened when the pipeline starts; WebSocket pings every 15 s and keep-alives for
  quiet contexts; a rolling restart (close 1012/1013) is bridged by the client itself (work with
  no audio yet is replayed); any other drop goes through Pipecat's reconnect logic.
* **Metrics**: TTFB (first audio of each turn) and usage, as every Pipecat TTS service reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

from . import missing_framework

try:
    from loguru import logger
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.frames import frames as pf  # ErrorFrame, TTSAudioRawFrame, ...
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.settings import NOT_GIVEN, TTSSettings
    from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_framework("pipecat", "Pipecat") from exc

from ..errors import KugelwireError, LocalProtocolError
from ..protocol.events import AudioChunk, ContextClosed, ServerError, TurnFinal, WordTimestamps
from ..transports.asyncio import AsyncContext, AsyncMulti, connect_multi
from . import DEFAULT_URL, ServiceOptions, language_code
from . import voice_id as _voice_id

__all__ = ["KugelwireTTSService", "KugelwireTTSSettings"]

#: Session settings the server changes with ``update_settings`` (no reconnect needed).
_LIVE = ("language", "speed", "temperature", "cfg_scale", "normalize")


def _not_given() -> Any:
    return NOT_GIVEN


@dataclass
class KugelwireTTSSettings(TTSSettings):
    """Runtime settings (``TTSUpdateSettingsFrame(delta=KugelwireTTSSettings(...))``): ``voice``
    and ``language`` (from Pipecat), ``speed`` (0.8-1.2), ``temperature`` (0-1), ``cfg_scale``
    (1.2-2.5), ``normalize`` and ``model`` (changing the model reconnects)."""

    speed: Any = field(default_factory=_not_given)
    temperature: Any = field(default_factory=_not_given)
    cfg_scale: Any = field(default_factory=_not_given)
    normalize: Any = field(default_factory=_not_given)


@dataclass
class _Context:
    handle: AsyncContext
    task: asyncio.Task[None] | None = None
    flushed: bool = False
    closing: bool = False
    audio: bool = False
    resampler: Any = None


class KugelwireTTSService(WebsocketTTSService):
    """Pipecat TTS over KugelAudio's multi-context socket (see the module docstring).

    ``voice_id``: the voice; ``url``: the service or ``ws://127.0.0.1:PORT`` of ``kugelwire
    serve``; ``language``: ISO 639-1 code or Pipecat ``Language``; ``sample_rate``: output rate
    (default: the pipeline's; audio is resampled when the server does not offer it);
    ``encoding``: ``"pcm"``, or ``"mulaw"`` / ``"alaw"`` to receive 8 kHz G.711 from the server
    (telephony; frames are still PCM16 for Pipecat); ``word_timestamps``: word-level TTSTextFrames
    (else sentence text frames after the audio); ``keepalive_interval``: seconds of quiet after
    which an open context is kept alive; ``connect_options``: more keyword arguments for
    :func:`~kugelwire.transports.asyncio.connect_multi`; ``settings``: the generation settings
    as in every Pipecat 1.x service, ``KugelwireTTSService.Settings(model=..., speed=...,
    temperature=..., cfg_scale=..., normalize=..., voice=..., language=...)`` (unset fields
    keep the server's defaults; a ``voice`` given there wins over ``voice_id``). Text is
    streamed token by token unless ``text_aggregation_mode=TextAggregationMode.SENTENCE``.
    Other keyword arguments go to Pipecat's ``WebsocketTTSService``.
    """

    Settings = KugelwireTTSSettings
    _turn_context_id: str | None

    def __init__(
        self,
        *,
        api_key: str,
        voice_id: int | str,
        url: str = DEFAULT_URL,
        language: Any = None,
        sample_rate: int | None = None,
        encoding: Literal["pcm", "mulaw", "alaw"] = "pcm",
        word_timestamps: bool = True,
        keepalive_interval: float = 10.0,
        connect_options: dict[str, Any] | None = None,
        settings: KugelwireTTSSettings | None = None,
        text_aggregation_mode: Any = None,
        **kwargs: Any,
    ) -> None:
        # the server's defaults, then the given settings (Pipecat's order: settings win)
        store = KugelwireTTSSettings(
            model=None, voice=str(voice_id), language=language, speed=None,
            temperature=None, cfg_scale=None, normalize=None,
        )
        if settings is not None:
            store.apply_update(settings)
        voice = store.voice if isinstance(store.voice, str) and store.voice else str(voice_id)
        store.voice = voice
        service = ServiceOptions(
            voice, encoding, word_timestamps, keepalive_interval, connect_options or {}
        )
        super().__init__(
            text_aggregation_mode=text_aggregation_mode or TextAggregationMode.TOKEN,
            push_text_frames=not word_timestamps,
            push_start_frame=True,
            pause_frame_processing=False,
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._api_key, self._url = api_key, url
        self._service = service
        self._multi: AsyncMulti | None = None
        self._contexts: dict[str, _Context] = {}
        self._receive_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._wire_rate = 0

    # -- Pipecat hooks -----------------------------------------------------------------------
    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Any) -> str | None:
        return language_code(language)

    @property
    def open_contexts(self) -> tuple[str, ...]:
        """Contexts this service has open on the server (closing ones included)."""
        return tuple(self._contexts)

    async def start(self, frame: pf.StartFrame) -> None:
        await super().start(frame)
        await self._connect()  # pre-connect: the first turn pays no handshake

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End the turn of ``context_id``: its one flush (the context closes after ``final``)."""
        ctx = self._contexts.get(context_id or self.get_active_audio_context_id() or "")
        if ctx is None or ctx.flushed or ctx.closing:
            return
        ctx.flushed = True
        await self._safely(ctx.handle.flush())

    async def on_turn_context_completed(self) -> None:
        context_id = self._turn_context_id
        await super().on_turn_context_completed()
        # Pipecat skips the flush when the turn's audio context already timed out; the server
        # context must end all the same.
        if context_id is not None:
            await self.flush_audio(context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        await self.stop_all_metrics()
        await self._close_now(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def _handle_interruption(
        self, frame: pf.InterruptionFrame, direction: FrameDirection
    ) -> None:
        await super()._handle_interruption(frame, direction)
        # Contexts whose audio context already ended (but whose server context is still open)
        # are interrupted too; uninterruptible ones keep their audio context and play on.
        playing = set(self.get_audio_contexts())
        for context_id in [c for c in self._contexts if c not in playing]:
            await self._close_now(context_id)

    async def _update_settings(self, delta: Any) -> dict[str, Any]:
        changed: dict[str, Any] = await super()._update_settings(delta)
        if not changed:
            return changed
        live = {k: getattr(self._settings, k) for k in _LIVE if k in changed}
        if "language" in live:
            live["language"] = language_code(live["language"])
        live = {k: v for k, v in live.items() if v is not None and v is not NOT_GIVEN}
        if "voice" in changed:
            self._service.voice_id = _voice_id(self._settings.voice)
        if "model" in changed and self._multi is not None:
            await self._close_connection_contexts()  # the model is fixed per connection
            await self._disconnect_websocket()
            await self._connect_websocket()
        elif live and self._multi is not None and not self._multi.closed:
            await self._safely(self._multi.update_settings(**live))
        if changed.keys() & {"voice", "model", "language"} and self._turn_context_id:
            # Like other context-based services: the rest of the turn gets a new context.
            await self.flush_audio(self._turn_context_id)
            self._turn_context_id = None  # so that create_context_id() makes a new one
            self._turn_context_id = self.create_context_id()
        return changed

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[pf.Frame | None, None]:
        try:
            ctx = await self._context(context_id)
            await ctx.handle.send_text(text)
            await self.start_tts_usage_metrics(text)
        except (KugelwireError, LocalProtocolError) as exc:
            yield pf.ErrorFrame(error=f"{self} could not send text: {exc}")
            yield pf.TTSStoppedFrame(context_id=context_id)
            return
        yield None

    # -- the connection (Pipecat's WebsocketService interface) ------------------------------
    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._receive_task is None:  # also retries a failed first connect (with backoff)
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    def _config(self) -> dict[str, Any]:
        s = self._settings
        values = {
            "language": language_code(s.language), "model_id": s.model, "speed": s.speed,
            "temperature": s.temperature, "cfg_scale": s.cfg_scale, "normalize": s.normalize,
        }
        given = {k: v for k, v in values.items() if v is not NOT_GIVEN}
        config, self._wire_rate = self._service.connect_kwargs(self.sample_rate or 24000, given)
        return config

    async def _connect_websocket(self) -> None:
        async with self._connect_lock:
            if self._multi is not None and not self._multi.closed:
                return
            try:
                self._multi = await connect_multi(self._url, api_key=self._api_key,
                                                  **self._config())
            except KugelwireError as exc:
                self._multi = None
                await self.push_error(error_msg=f"{self} cannot connect: {exc}", exception=exc)
                await self._call_event_handler("on_connection_error", str(exc))
                return
            await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self) -> None:
        multi, self._multi = self._multi, None
        contexts = list(self._contexts.values())
        self._contexts.clear()
        if multi is not None:
            if contexts:  # work is being abandoned (a cancel): no draining
                await multi.aclose()
            else:
                await multi.close()  # bounded by close_timeout
            await self._call_event_handler("on_disconnected")
        for ctx in contexts:
            if ctx.task is not None:
                await self.cancel_task(ctx.task)

    async def _verify_connection(self) -> bool:
        return self._multi is not None and not self._multi.closed

    async def _reconnect_websocket(self, attempt_number: int) -> bool:
        if await self._verify_connection():  # a turn reconnected in the meantime
            return True
        result: bool = await super()._reconnect_websocket(attempt_number)
        return result

    async def _receive_messages(self) -> None:
        """Return once the connection is gone for good (audio is read per context)."""
        while self._multi is not None and not self._multi.closed:
            await asyncio.sleep(0.2)
        if self._multi is not None:
            error = ConnectionError(f"{self} lost the connection to {self._url}")
            raise error

    def _is_keepalive_ready(self) -> bool:
        return False  # the client pings the socket and keeps quiet contexts alive itself

    # -- contexts ----------------------------------------------------------------------------
    async def _context(self, context_id: str) -> _Context:
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            return ctx
        if self._multi is None or self._multi.closed:
            await self._connect_websocket()
        if self._multi is None:
            raise KugelwireError(f"not connected to {self._url}")
        handle = await self._multi.create_context(
            context_id, voice_id=self._service.voice_id,
            cfg_scale=self._given(self._settings.cfg_scale),
        )
        ctx = self._contexts[context_id] = _Context(handle)
        ctx.task = self.create_task(self._pump(context_id, ctx), name=f"kugelwire-{context_id}")
        return ctx

    @staticmethod
    def _given(value: Any) -> Any:
        return None if value is NOT_GIVEN else value

    async def _close_now(self, context_id: str) -> None:
        ctx = self._contexts.get(context_id)
        if ctx is not None and not ctx.closing:
            ctx.closing = True
            await self._safely(ctx.handle.close(immediate=True))

    async def _safely(self, command: Any) -> None:
        try:
            await command
        except (KugelwireError, LocalProtocolError) as exc:
            # a closed connection or context: its pump reports how it ended
            logger.debug(f"{self}: {exc}")

    async def _pump(self, context_id: str, ctx: _Context) -> None:
        """Move one context's events into its Pipecat audio context, in order."""
        try:
            async for event in ctx.handle:
                if ctx.closing and not isinstance(event, ContextClosed):
                    continue
                if isinstance(event, AudioChunk):
                    await self._on_audio(context_id, ctx, event)
                elif isinstance(event, WordTimestamps):
                    if not self._push_text_frames:
                        words = [(w.word, w.start_ms / 1000.0) for w in event.turn_words]
                        await self.add_word_timestamps(words, context_id)
                elif isinstance(event, TurnFinal):
                    await self._end_audio(context_id)
                    ctx.closing = True
                    await self._safely(ctx.handle.close())  # frees the server's slot
                elif isinstance(event, ServerError):  # it names this context: the turn is over
                    await self.push_error(
                        error_msg=f"{self}: {event.error_code.value}: {event.message}"
                    )
                    await self._end_audio(context_id)
                    await self._close_now(context_id)
        except KugelwireError as exc:
            await self.push_error(error_msg=f"{self}: context {context_id} failed: {exc}",
                                  exception=exc)
            await self._end_audio(context_id)
        finally:
            if self._contexts.get(context_id) is ctx:
                del self._contexts[context_id]

    async def _on_audio(self, context_id: str, ctx: _Context, event: AudioChunk) -> None:
        audio = event.pcm16()
        if event.sample_rate != self.sample_rate:
            if ctx.resampler is None:
                ctx.resampler = create_stream_resampler()
            audio = await ctx.resampler.resample(audio, event.sample_rate, self.sample_rate)
        if audio:
            ctx.audio = True
            frame = pf.TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id)
            await self.append_to_audio_context(context_id, frame)

    async def _end_audio(self, context_id: str) -> None:
        if self.audio_context_available(context_id):
            stopped = pf.TTSStoppedFrame(context_id=context_id)
            await self.append_to_audio_context(context_id, stopped)
            await self.remove_audio_context(context_id)
