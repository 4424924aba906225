"""The LiveKit Agents TTS plugin through ``tts.TTS.synthesize`` / ``stream`` against the local
server."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import Any

import pytest

pytest.importorskip(
    "livekit.agents",
    reason="the LiveKit integration needs livekit-agents: pip install 'kugelwire[livekit]'",
)

from livekit.agents import APIConnectionError, APIConnectOptions, tts

from kugelwire.integrations.livekit import TTS
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine

from .conftest import (
    DropProxy,
    eventually,
    server_open_contexts,
    server_sessions,
    tone_word_s,
)

pytestmark = pytest.mark.timeout(60)
TIMED = "lk.timed_transcripts"


def plugin(server: Any, **kw: Any) -> TTS:
    return TTS(api_key=server.api_key, voice_id=1, url=server.url, **kw)


async def speak(stream: Any, tokens: list[str]) -> list[tts.SynthesizedAudio]:
    for token in tokens:
        stream.push_text(token)
    stream.end_input()
    return [ev async for ev in stream]


def timed(events: list[Any]) -> list[Any]:
    return [t for ev in events for t in ev.frame.userdata.get(TIMED, [])]


def seconds(events: list[Any]) -> float:
    return sum(ev.frame.duration for ev in events)


def test_capabilities_and_constructor() -> None:
    t = TTS(api_key="k", voice_id=1)
    assert t.capabilities.streaming and t.capabilities.aligned_transcript
    assert t.sample_rate == 24000 and t.num_channels == 1
    assert TTS(api_key="k", voice_id=1, word_timestamps=False).capabilities.aligned_transcript \
        is False
    with pytest.raises(ValueError, match="encoding"):
        TTS(api_key="k", voice_id=1, encoding="opus")  # type: ignore[arg-type]


async def test_synthesize_short_utterance(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server)
    events = [ev async for ev in t.synthesize("Hello.")]
    assert seconds(events) == pytest.approx(tone_word_s("Hello."), abs=0.011)
    assert [str(w) for w in timed(events)] == ["Hello. "]
    assert events[-1].is_final
    await t.aclose()
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0)


async def test_stream_times_increase_across_sentences(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server)
    text = "Hello world. How are you today? I am fine, thanks! See you."
    events = await speak(t.stream(), [w + " " for w in text.split()])
    words = timed(events)
    assert "".join(words).split() == text.split()  # every word once, in order
    starts = [w.start_time for w in words]
    assert all(b > a for a, b in itertools.pairwise(starts)), starts  # never back to 0.0
    assert all(w.end_time > w.start_time for w in words)
    for (a, b), w in zip(itertools.pairwise(starts), text.split()[:-1], strict=True):
        assert b - a == pytest.approx(tone_word_s(w), abs=0.002)
    assert seconds(events) == pytest.approx(sum(map(tone_word_s, text.split())), abs=0.011)
    assert [ev.is_final for ev in events].count(True) == 1 and events[-1].is_final
    await t.aclose()


async def test_streams_reuse_one_connection(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server)
    t.prewarm()
    assert await eventually(lambda: server_sessions(kugelwire_server.handle) == 1)
    first = await speak(t.stream(), ["First ", "stream."])
    multi = t._multi
    second = await t.synthesize("Second one.").collect()
    together = await asyncio.gather(*(speak(t.stream(), [f"Stream {n}."]) for n in range(5)))
    assert t._multi is multi and server_sessions(kugelwire_server.handle) == 1
    assert seconds(first) > 0 and second.duration > 0
    assert all(seconds(evs) == pytest.approx(tone_word_s("Stream") + tone_word_s("0."),
                                             abs=0.011) for evs in together)
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0)
    await t.aclose()


@pytest.mark.kugelwire_engine("tone", realtime_factor=1.0)
async def test_aclose_mid_sentence_then_new_stream(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server)
    stream = t.stream()
    stream.push_text("This is a rather long sentence that will never be spoken to its end.")
    stream.end_input()
    got: list[Any] = []
    async for ev in stream:
        got.append(ev)
        if seconds(got) >= 0.4:
            break
    await stream.aclose()  # barge-in
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0, 2.0)
    assert [ev async for ev in stream] == []  # nothing of it after aclose()
    events = await speak(t.stream(), ["After ", "that."])
    assert "".join(timed(events)).split() == ["After", "that."]
    assert seconds(events) == pytest.approx(tone_word_s("After") + tone_word_s("that."),
                                            abs=0.011)
    await t.aclose()


async def test_8khz_mulaw(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server, sample_rate=8000, encoding="mulaw")
    events = await speak(t.stream(), ["Your ", "table ", "is ", "booked."])
    assert {ev.frame.sample_rate for ev in events} == {8000}
    assert seconds(events) == pytest.approx(
        sum(map(tone_word_s, ["Your", "table", "is", "booked."])), abs=0.011)
    await t.aclose()


async def test_resampled_to_48khz(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server, sample_rate=48000)
    assert t.wire_sample_rate == 44100
    events = await speak(t.stream(), ["Resampled ", "audio."])
    assert {ev.frame.sample_rate for ev in events} == {48000}
    assert seconds(events) == pytest.approx(tone_word_s("Resampled") + tone_word_s("audio."),
                                            abs=0.02)
    await t.aclose()


async def test_update_options_without_reconnecting(kugelwire_server: Any) -> None:
    t = plugin(kugelwire_server)
    slow = await speak(t.stream(), ["Same ", "words ", "twice."])
    multi = t._multi
    t.update_options(speed=1.2, voice_id=2)
    fast = await speak(t.stream(), ["Same ", "words ", "twice."])
    assert t._multi is multi  # no reconnect
    assert seconds(fast) == pytest.approx(seconds(slow) / 1.2, abs=0.011)  # speed applied
    t.update_options(model_id="kugel-3")
    await speak(t.stream(), ["New ", "model."])
    assert t._multi is not multi  # the model is per connection
    await t.aclose()


@pytest.mark.kugelwire_engine("tone", realtime_factor=0.05)
async def test_session_of_30_streams_with_interruptions_leaks_no_context(
    kugelwire_server: Any,
) -> None:
    t = plugin(kugelwire_server)
    text = "Answer number {} is here. It has two sentences and some more words."
    full = sum(map(tone_word_s, text.format(0).split()))
    total = 0.0
    for n in range(30):
        stream = t.stream()
        for word in text.format(n).split():
            stream.push_text(word + " ")
        stream.end_input()
        got: list[Any] = []
        async for ev in stream:
            got.append(ev)
            if n % 3 == 2 and seconds(got) >= 0.5:
                break  # the user barges in
        await stream.aclose()
        total += seconds(got)
        if n % 3 != 2:
            assert seconds(got) == pytest.approx(full, abs=0.011)
    assert total > 50  # about a minute of speech
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0, 2.0)
    assert server_sessions(kugelwire_server.handle) == 1
    await t.aclose()


async def test_server_restart_mid_session() -> None:
    key = "test-" + secrets.token_hex(4)
    first = run_in_thread(engine=ToneEngine(), api_key=key).start()
    port = first.port
    second = run_in_thread(port=port, engine=ToneEngine(), api_key=key)
    t = TTS(api_key=key, voice_id=1, url=f"ws://127.0.0.1:{port}",
            connect_options={"restart_delay": 0.05})
    options = APIConnectOptions(max_retry=3, retry_interval=0.3, timeout=5.0)
    try:
        before = await speak(t.stream(conn_options=options), ["Before ", "the ", "restart."])
        await asyncio.to_thread(first.stop)  # 1012 to the idle socket, then gone
        await asyncio.sleep(0.3)
        await asyncio.to_thread(second.start)
        after = await speak(t.stream(conn_options=options), ["After ", "the ", "restart."])
        assert "".join(timed(before)).split() == ["Before", "the", "restart."]
        assert "".join(timed(after)).split() == ["After", "the", "restart."]
        assert server_open_contexts(second) == 0 or await eventually(
            lambda: server_open_contexts(second) == 0)
        await t.aclose()
    finally:
        first.stop()
        second.stop()


@pytest.mark.kugelwire_engine("tone", realtime_factor=1.0)
async def test_dropped_connection(kugelwire_server: Any) -> None:
    """A socket that dies without a close frame: the stream speaking on it fails with
    LiveKit's retryable connection error (after partial audio: not replayed); the next stream
    opens a new connection."""
    async with DropProxy(kugelwire_server.port) as proxy:
        t = TTS(api_key=kugelwire_server.api_key, voice_id=1, url=proxy.url)
        stream = t.stream(conn_options=APIConnectOptions(max_retry=0, timeout=5.0))
        stream.push_text("A long sentence that the network will cut in the middle of it.")
        stream.end_input()
        got: list[Any] = []
        with pytest.raises(APIConnectionError):
            async for ev in stream:
                got.append(ev)
                if len(got) == 1:
                    proxy.drop()
        events = await speak(t.stream(), ["After ", "the ", "drop."])
        assert "".join(timed(events)).split() == ["After", "the", "drop."]
        assert proxy.accepted == 2
        await t.aclose()
    assert await eventually(lambda: server_open_contexts(kugelwire_server.handle) == 0)
