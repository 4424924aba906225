"""``benchmarks/_loadgen.py``, the scale benchmark's lean client, is a correct client: the strict
server takes its handshake and masked frames, and it sees each turn's audio and its end (no
timing here)."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks import _loadgen
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine

from .ops._prom import get, scrape

pytestmark = pytest.mark.timeout(30)

KEY = "loadgen-key"


def test_lean_turns_end_with_audio_and_wrong_keys_are_refused() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY, metrics=True) as server:

        async def main() -> list[float | BaseException]:
            streams = [await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", KEY)
                       for _ in range(3)]
            try:
                tokens = ["Hello", " there,", " one", " sentence."]
                out: list[float | BaseException] = []
                for _ in range(2):  # two turns on each connection, staggered starts
                    now = time.perf_counter()
                    out += await _loadgen.run_turns(
                        streams, tokens, [now + 0.05 * i for i in range(3)], lambda: 0.001,
                        timeout=10)
                return out
            finally:
                for stream in streams:
                    stream.close()

        first_audio = asyncio.run(asyncio.wait_for(main(), 20))
        assert len(first_audio) == 6
        assert all(isinstance(t, float) and 0 < t < 5 for t in first_audio), first_audio
        samples = scrape(server.url)  # the server counted every turn as completed
        assert get(samples, "kugelwire_turns_total", endpoint="stream", outcome="completed") == 6

        async def refused() -> None:
            await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", "wrong")

        with pytest.raises(RuntimeError, match=r"upgrade refused: HTTP/1.1 401"):
            asyncio.run(asyncio.wait_for(refused(), 10))


def test_a_connection_that_fails_is_reported_and_the_others_finish() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:

        async def main() -> list[float | BaseException]:
            streams = [await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", KEY)
                       for _ in range(2)]
            streams[0].close()  # gone before its turn: connection_lost ends it
            try:
                now = time.perf_counter()
                return await _loadgen.run_turns(
                    streams, ["One", " sentence."], [now, now], lambda: 0.001, timeout=10)
            finally:
                streams[1].close()

        lost, ok = asyncio.run(asyncio.wait_for(main(), 20))
        assert isinstance(lost, RuntimeError) and "connection lost" in str(lost)
        assert isinstance(ok, float) and 0 < ok < 5


def test_turns_on_connections_still_being_made_start_when_each_is_made() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:

        async def late() -> _loadgen.LeanStream:
            await asyncio.sleep(0.3)  # made after its start: its turn starts then
            return await _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", KEY)

        async def main() -> tuple[list[float | BaseException], float, int]:
            tasks = [
                asyncio.ensure_future(late()),
                asyncio.ensure_future(
                    _loadgen.connect("127.0.0.1", server.port, "/ws/tts/stream", "wrong")),
            ]
            t0 = time.perf_counter()
            try:
                out = await _loadgen.run_turns(
                    tasks, ["One", " sentence."], [t0, t0], lambda: 0.001, timeout=10)
                return out, time.perf_counter() - t0, len(_loadgen.streams_of(tasks))
            finally:
                for stream in _loadgen.streams_of(tasks):
                    stream.close()

        (ok, refused), took, connected = asyncio.run(asyncio.wait_for(main(), 20))
        assert isinstance(ok, float) and 0 < ok < 5
        assert isinstance(refused, RuntimeError) and "401" in str(refused)
        assert took >= 0.3 and connected == 1
