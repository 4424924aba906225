"""``benchmarks/_loadgen.py``, the scale benchmark's lean client, is a correct client: the strict
server takes its handshake and masked frames, and it sees each turn's audio and its end (no
timing here)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import _loadgen
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine

from .ops._prom import get, scrape

pytestmark = pytest.mark.timeout(30)

KEY = "loadgen-key"


def test_lean_turns_end_with_audio_and_wrong_keys_are_refused() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY, metrics=True) as server:

        async def main() -> list[float]:
            async def pause() -> None:
                await asyncio.sleep(0.001)

            stream = await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", KEY)
            try:
                tokens = ["Hello", " there,", " one", " sentence."]
                return [await _loadgen.turn(stream, tokens, pause) for _ in range(2)]
            finally:
                stream.close()

        first_audio = asyncio.run(asyncio.wait_for(main(), 20))
        assert len(first_audio) == 2 and all(0 < t < 5 for t in first_audio)
        samples = scrape(server.url)  # the server counted both turns as completed
        assert get(samples, "kugelwire_turns_total", endpoint="stream", outcome="completed") == 2

        async def refused() -> None:
            await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", "wrong")

        with pytest.raises(RuntimeError, match=r"upgrade refused: HTTP/1.1 401"):
            asyncio.run(asyncio.wait_for(refused(), 10))
