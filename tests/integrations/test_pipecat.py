"""KugelwireTTSService in real Pipecat pipelines (pipecat's own ``run_test``) against the local
server."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip(
    "pipecat", reason="the Pipecat integration needs pipecat-ai: pip install 'kugelwire[pipecat]'"
)

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.workers.runner import WorkerRunner

from kugelwire.integrations.pipecat import KugelwireTTSService
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine
from kugelwire.transports.asyncio import AsyncContext

from .conftest import (
    DropProxy,
    eventually,
    server_open_contexts,
    server_sessions,
    tone_word_s,
)

pytestmark = pytest.mark.timeout(60)


def service(server: Any, **kw: Any) -> KugelwireTTSService:
    kw.setdefault("sample_rate", 24000)
    return KugelwireTTSService(api_key=server.api_key, voice_id=1, url=server.url, **kw)


def turn(*tokens: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in tokens),
            LLMFullResponseEndFrame()]


def audio_s(frames: Sequence[Frame], context_id: str | None = None) -> float:
    return sum(len(f.audio) / 2 / f.sample_rate for f in frames
               if isinstance(f, TTSAudioRawFrame)
               and (context_id is None or f.context_id == context_id))


def words(frames: Sequence[Frame]) -> list[TTSTextFrame]:
    return [f for f in frames if isinstance(f, TTSTextFrame)]


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every text / flush the service sends to a context, in order."""
    sent: list[tuple[str, str]] = []
    send_text, flush = AsyncContext.send_text, AsyncContext.flush

    async def spy_send(self: AsyncContext, text: str, *, flush: bool = False) -> None:
        assert not flush, "text is never sent with a flush"
        sent.append((self.context_id, text))
        await send_text(self, text)

    async def spy_flush(self: AsyncContext) -> None:
        sent.append((self.context_id, "<flush>"))
        await flush(self)

    monkeypatch.setattr(AsyncContext, "send_text", spy_send)
    monkeypatch.setattr(AsyncContext, "flush", spy_flush)
    return sent


async def test_short_utterance(kugelwire_server: Any, flushes: list[tuple[str, str]]) -> None:
    tts = service(kugelwire_server)
    down, up = await run_test(tts, frames_to_send=[*turn("Hello."), SleepFrame(0.3)],
                              pipeline_params=PipelineParams(enable_metrics=True))
    ttfb = [d for f in down if isinstance(f, MetricsFrame) for d in f.data
            if isinstance(d, TTFBMetricsData) and d.value > 0]
    assert len(ttfb) == 1 and ttfb[0].value < 2.0  # time to the turn's first audio
    kinds = [type(f) for f in down if isinstance(f, TTSStartedFrame | TTSStoppedFrame)]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]
    assert [w.text for w in words(down)] == ["Hello."]
    assert audio_s(down) == pytest.approx(tone_word_s("Hello."), abs=0.01)
    assert [t for _, t in flushes] == ["Hello.", "<flush>"]
    assert not [f for f in up if "Error" in type(f).__name__]
    assert server_open_contexts(kugelwire_server.handle) == 0 and not tts.open_contexts


async def test_streamed_turn_word_times_increase_across_sentences(
    kugelwire_server: Any, flushes: list[tuple[str, str]]
) -> None:
    text = "Hello there. How are you today? I am fine, thanks! See you."
    tokens = [w + " " for w in text.split()]
    down, _ = await run_test(service(kugelwire_server), frames_to_send=[*turn(*tokens),
                                                                         SleepFrame(0.5)])
    spoken = words(down)
    assert [w.text for w in spoken] == text.split()  # every word, once, in order
    pts = [w.pts for w in spoken]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts  # never restarts at a sentence
    # turn-relative: the gaps between words are the tone engine's word lengths
    for (a, b), w in zip(itertools.pairwise(pts), text.split()[:-1], strict=True):
        assert (b - a) / 1e9 == pytest.approx(tone_word_s(w), abs=0.002)
    assert audio_s(down) == pytest.approx(sum(map(tone_word_s, text.split())), abs=0.01)
    # tokens streamed unflushed, exactly one flush at the end of the turn, one context
    assert len({cid for cid, _ in flushes}) == 1
    sent = [t for _, t in flushes]
    assert sent.count("<flush>") == 1 and sent[-1] == "<flush>"
    assert len(sent) > 10 and "".join(sent[:-1]).split() == text.split()


async def test_two_turns_one_connection(kugelwire_server: Any) -> None:
    tts = service(kugelwire_server)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(server_sessions(kugelwire_server.handle))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        down, _ = await run_test(tts, frames_to_send=[
            *turn("First ", "turn."), SleepFrame(0.3), *turn("Second ", "turn."), SleepFrame(0.3),
            TTSSpeakFrame("Third."), SleepFrame(0.3),
        ])
    finally:
        watcher.cancel()
    assert [w.text for w in words(down)] == ["First", "turn.", "Second", "turn.", "Third."]
    contexts = [f.context_id for f in down if isinstance(f, TTSStartedFrame)]
    assert len(set(contexts)) == 3  # one context per turn
    assert max(seen) == 1  # ... all on one pre-connected socket
    assert server_open_contexts(kugelwire_server.handle) == 0


@pytest.mark.kugelwire_engine("tone", realtime_factor=1.0)
async def test_interruption_mid_sentence_then_new_turn(kugelwire_server: Any) -> None:
    long = "This is a rather long sentence that will never be spoken to its very end."
    down, _ = await run_test(service(kugelwire_server), frames_to_send=[
        *turn(*(w + " " for w in long.split())), SleepFrame(0.5), InterruptionFrame(),
        SleepFrame(0.2), *turn("After ", "that."), SleepFrame(1.2),
    ])
    started = [f.context_id for f in down if isinstance(f, TTSStartedFrame)]
    assert len(started) == 2
    first, second = started
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    late = [f for f in down[cut:] if getattr(f, "context_id", None) == first]
    assert not [f for f in late if isinstance(f, TTSAudioRawFrame)], "audio after barge-in"
    assert 0 < audio_s(down, first) < sum(map(tone_word_s, long.split())) / 2
    assert audio_s(down, second) == pytest.approx(tone_word_s("After") + tone_word_s("that."),
                                                  abs=0.01)
    assert [w.text for w in words(down[cut:])] == ["After", "that."]
    assert server_open_contexts(kugelwire_server.handle) == 0


def _samples(frames: Sequence[Frame]) -> list[int]:
    pcm = b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame))
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


async def test_8khz_mulaw_for_telephony(kugelwire_server: Any) -> None:
    frames = [*turn("Your ", "table ", "is ", "booked."), SleepFrame(0.3)]
    mulaw, _ = await run_test(service(kugelwire_server, sample_rate=8000, encoding="mulaw"),
                              frames_to_send=frames)
    pcm, _ = await run_test(service(kugelwire_server, sample_rate=8000), frames_to_send=frames)
    rates = {f.sample_rate for f in mulaw if isinstance(f, TTSAudioRawFrame)}
    assert rates == {8000}
    a, b = _samples(mulaw), _samples(pcm)
    assert len(a) == len(b) > 0
    peak = max(map(abs, b))
    assert peak > 1000
    # G.711 on the wire: the same tones, within mu-law's quantisation error, but not identical
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < peak / 16
    assert a != b


class Recorder(FrameProcessor):
    """The end of a pipeline: keeps every downstream frame, for a driver to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
        await self.push_frame(frame, direction)

    def started(self) -> list[str]:
        return [f.context_id for f in self.frames if isinstance(f, TTSStartedFrame)]

    def has(self, kind: type, context_id: str) -> bool:
        return any(isinstance(f, kind) and f.context_id == context_id for f in self.frames)


async def run_session(tts: KugelwireTTSService, script: Any) -> list[Frame]:
    """Run ``tts`` in a pipeline while ``script(worker, recorder)`` drives it (event-driven,
    unlike ``run_test``'s fixed sleeps), then end the pipeline."""
    recorder = Recorder()
    worker = PipelineWorker(Pipeline([tts, recorder]), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    async def drive() -> None:
        await asyncio.wait_for(started.wait(), 10)
        try:
            await script(worker, recorder)
        finally:
            await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    return recorder.frames


@pytest.mark.kugelwire_engine("tone", realtime_factor=0.1)
async def test_agent_session_30_turns_with_interruptions_leaks_no_context(
    kugelwire_server: Any,
) -> None:
    """Thirty turns (about a minute of speech); every third, a long answer, is interrupted
    as soon as its first audio plays."""
    texts = []
    for n in range(30):
        text = f"Answer number {n} is here. It has two sentences and some more words."
        if n % 3 == 2:  # 8 s of speech, 0.8 s to synthesise
            text += " And then it goes on and on, far longer than the user wants to listen."
        texts.append(text)

    async def script(worker: PipelineWorker, rec: Recorder) -> None:
        for n, text in enumerate(texts):
            await worker.queue_frames(turn(*(w + " " for w in text.split())))
            assert await eventually(lambda n=n: len(rec.started()) > n, 10), n
            cid = rec.started()[n]
            if n % 3 == 2:
                assert await eventually(lambda cid=cid: rec.has(TTSAudioRawFrame, cid), 10)
                await worker.queue_frame(InterruptionFrame())
            else:
                assert await eventually(lambda cid=cid: rec.has(TTSStoppedFrame, cid), 10)

    tts = service(kugelwire_server)
    down = await run_session(tts, script)
    contexts = [f.context_id for f in down if isinstance(f, TTSStartedFrame)]
    assert len(set(contexts)) == 30  # one context per turn
    full = [sum(map(tone_word_s, t.split())) for t in texts]
    spoken = [audio_s(down, cid) for cid in contexts]
    for n in range(30):
        if n % 3 != 2:
            assert spoken[n] == pytest.approx(full[n], abs=0.01), (n, spoken)
        else:
            assert spoken[n] < full[n] / 2, (n, spoken)  # cut, nothing after the barge-in
    assert sum(spoken) > 50  # about a minute of speech
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0, 2)
    assert not tts.open_contexts
    assert not [f for f in down if isinstance(f, ErrorFrame)]


async def test_server_restart_mid_session() -> None:
    key = "test-" + secrets.token_hex(4)
    first = run_in_thread(engine=ToneEngine(), api_key=key).start()
    port = first.port
    tts = KugelwireTTSService(
        api_key=key, voice_id=1, url=f"ws://127.0.0.1:{port}", sample_rate=24000,
        reconnect_backoff_min_wait=0.1, reconnect_backoff_max_wait=0.3,
        connect_options={"restart_delay": 0.05},
    )
    second = run_in_thread(port=port, engine=ToneEngine(), api_key=key)

    async def restart() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(first.stop)  # 1012 to the idle socket, then gone
        await asyncio.sleep(0.5)  # the client's own reconnect fails meanwhile
        await asyncio.to_thread(second.start)

    try:
        task = asyncio.create_task(restart())
        down, _ = await run_test(tts, frames_to_send=[
            *turn("Before ", "the ", "restart."), SleepFrame(3.0),
            *turn("After ", "the ", "restart."), SleepFrame(0.5),
        ])
        await task
        assert [w.text for w in words(down)] == ["Before", "the", "restart.",
                                                 "After", "the", "restart."]
        assert server_open_contexts(second) == 0
    finally:
        first.stop()
        second.stop()


async def test_settings_update_applies_without_reconnecting(kugelwire_server: Any) -> None:
    from pipecat.frames.frames import TTSUpdateSettingsFrame

    from kugelwire.integrations.pipecat import KugelwireTTSSettings

    tts = service(kugelwire_server, language="en")
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(server_sessions(kugelwire_server.handle))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        down, up = await run_test(tts, frames_to_send=[
            *turn("Same ", "words ", "twice."), SleepFrame(0.3),
            TTSUpdateSettingsFrame(delta=KugelwireTTSSettings(speed=1.2, voice="2")),
            SleepFrame(0.1), *turn("Same ", "words ", "twice."), SleepFrame(0.3),
        ])
    finally:
        watcher.cancel()
    first, second = (f.context_id for f in down if isinstance(f, TTSStartedFrame))
    assert audio_s(down, second) == pytest.approx(audio_s(down, first) / 1.2, abs=0.01)
    assert max(seen) == 1  # the same socket throughout
    assert tts.settings.speed == 1.2
    assert not [f for f in up if "Error" in type(f).__name__]


async def test_constructor_settings_are_pipecat_settings(kugelwire_server: Any) -> None:
    """``settings=KugelwireTTSService.Settings(...)`` (the Pipecat 1.x idiom) sets the
    generation settings of the connection: speed 1.2 speaks the same words in 1/1.2 of the
    time, and a ``voice`` given there wins over ``voice_id``."""
    plain = service(kugelwire_server)
    fast = service(kugelwire_server, settings=KugelwireTTSService.Settings(speed=1.2, voice="2"))
    assert fast.settings.speed == 1.2 and fast.settings.voice == "2"
    assert plain.settings.speed is None and plain.settings.voice == "1"
    frames = [*turn("Same ", "words ", "twice."), SleepFrame(0.3)]
    down_plain, _ = await run_test(plain, frames_to_send=frames)
    down_fast, up = await run_test(fast, frames_to_send=frames)
    assert audio_s(down_fast) == pytest.approx(audio_s(down_plain) / 1.2, abs=0.01)
    assert not [f for f in up if "Error" in type(f).__name__]


async def test_dropped_connection_reconnects(kugelwire_server: Any) -> None:
    """A socket that dies without a close frame (not a restart): Pipecat's reconnect logic
    opens a new one and the next turn is spoken on it."""
    async with DropProxy(kugelwire_server.port) as proxy:
        tts = KugelwireTTSService(
            api_key=kugelwire_server.api_key, voice_id=1, url=proxy.url, sample_rate=24000,
            reconnect_backoff_min_wait=0.1, reconnect_backoff_max_wait=0.3,
        )

        async def cut() -> None:
            await asyncio.sleep(0.8)
            proxy.drop()

        task = asyncio.create_task(cut())
        down, _ = await run_test(tts, frames_to_send=[
            *turn("Before ", "the ", "drop."), SleepFrame(1.5),
            *turn("After ", "the ", "drop."), SleepFrame(0.5),
        ])
        await task
    assert proxy.accepted == 2
    assert [w.text for w in words(down)] == ["Before", "the", "drop.", "After", "the", "drop."]
    assert server_open_contexts(kugelwire_server.handle) == 0
