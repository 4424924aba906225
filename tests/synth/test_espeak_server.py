"""Issue 5: the official SDK gets eSpeak audio and word timestamps from our server (loopback)."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from typing import Any

import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("soxr")
pytest.importorskip("kugelaudio")
os.environ["KUGELAUDIO_TELEMETRY"] = "0"
import kugelaudio

from kugelwire.server import run_in_thread
from kugelwire.synth import EspeakEngine

KEY = "local-test-key"
pytestmark = pytest.mark.timeout(20)


def test_official_sdk_streams_espeak_with_word_timestamps() -> None:
    engine = EspeakEngine()
    tokens = ["Hello", " from", " the", " embedded", " voice.", " It", " speaks", " twice."]
    stamps: list[list[Any]] = []

    async def body(client: Any) -> None:
        async with client.tts.streaming_session(
            voice_id=1,
            model_id="kugel-3",
            language="en",
            sample_rate=16000,
            word_timestamps=True,
            on_word_timestamps=stamps.append,
        ) as s:
            chunks = []
            for tok in tokens:
                chunks += [c async for c in s.send(tok)]
            chunks += [c async for c in s.flush()]
            assert chunks and all(c.sample_rate == 16000 for c in chunks)
            pcm = b"".join(c.audio for c in chunks)
            values = memoryview(pcm).cast("h")
            level = math.sqrt(sum(v * v for v in values) / len(values))
            seconds = len(values) / 16000
            assert level > 300  # speech, not silence
            assert 1.5 < seconds < 8.0
            final = s.last_final
            assert final is not None and final["final"] is True

    async def main(port: int) -> None:
        client = kugelaudio.KugelAudio(
            api_key=KEY, api_url=f"http://127.0.0.1:{port}", telemetry=False
        )
        try:
            await asyncio.wait_for(body(client), 15)
        finally:
            await client.aclose()

    with run_in_thread(api_key=KEY, engine=engine) as server:
        asyncio.run(main(server.port))

    words = [w.word for frame in stamps for w in frame]
    assert words == ["Hello", "from", "the", "embedded", "voice", "It", "speaks", "twice"]
    for frame in stamps:  # one frame per chunk, chunk-relative times
        assert all(w.end_ms >= w.start_ms >= 0 for w in frame)
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(frame))
    assert engine.runs and all(r.finished and r.voice == "en-us+klatt" for r in engine.runs)
