"""Loopback figures: audio frames/s, client CPU per frame and flush->first-audio for our
asyncio, trio and sync clients, the official SDK and a bare ``websockets`` client, all against
the same kugelwire server (a separate process running :class:`benchmarks._engine.FrameEngine`,
200 ms frames of 24 kHz PCM16). Every client decodes every frame's audio. The clients run in
interleaved rounds (so machine noise hits them alike); with the ``fast`` extra installed the
asyncio client also runs once more on the standard library's base64 (``[stdlib base64]``).

    python -m benchmarks.bench_loopback [--quick]
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._common import FAST_BASE64, figure, median, parse_args, percentile, stdlib_base64
from benchmarks._engine import KEY, ServerProcess, _pcm
from kugelwire.protocol.events import AudioChunk
from kugelwire.protocol.messages import AudioFrame

os.environ.setdefault("KUGELAUDIO_TELEMETRY", "0")

FRAME_MS = 200
SR = 24000
FRAMES = 50  # per throughput turn ("50 ..." asks the engine for 50 frames)
THROUGHPUT_TEXT = f"{FRAMES} frames of audio please."
LATENCY_TEXT = "1 frame."

# A client run: (turns of THROUGHPUT_TEXT, latency probes) -> (frames, wall s, cpu s, latencies)
Result = tuple[int, float, float, list[float]]


def _frame_text() -> str:
    pcm = _pcm(SR * FRAME_MS // 1000 * FRAMES)[: SR * FRAME_MS // 1000 * 2]
    return AudioFrame.from_bytes(pcm, idx=7, sr=SR, chunk_id=0).to_json()


def floor_cpu(n: int) -> float:
    """CPU seconds per frame of the floor: ``json.loads`` + base64 decode."""
    text = _frame_text()
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            base64.b64decode(json.loads(text)["audio"])
        best = min(best, (time.process_time() - t0) / n)
    return best


# -- the clients ---------------------------------------------------------------------------------
async def _timed(turn: Callable[[str], Awaitable[int]], turns: int, probes: int) -> Result:
    await turn(LATENCY_TEXT)  # warm up
    latencies = []
    for _ in range(probes):
        t0 = time.perf_counter()
        await turn(LATENCY_TEXT)  # returns after the first audio (then drains the turn)
        latencies.append(_first[0] - t0)
    frames = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(turns):
        frames += await turn(THROUGHPUT_TEXT)
    return frames, time.perf_counter() - w0, time.process_time() - c0, latencies


_first = [0.0]  # perf_counter() at the first audio frame of the last turn


def _mark(frames: int) -> None:
    if frames == 0:
        _first[0] = time.perf_counter()


async def _kugelwire_async(url: str, turns: int, probes: int, connect: Any) -> Result:
    async with await connect(url, api_key=KEY, voice_id=1) as stream:

        async def turn(text: str) -> int:
            frames = 0
            async for event in await stream.send_text(text, flush=True):
                if type(event) is AudioChunk:
                    _mark(frames)
                    event.pcm16()
                    frames += 1
            return frames

        return await _timed(turn, turns, probes)


def run_asyncio(url: str, turns: int, probes: int) -> Result:
    from kugelwire.transports.asyncio import connect_stream

    return asyncio.run(_kugelwire_async(url, turns, probes, connect_stream))


def run_asyncio_stdlib(url: str, turns: int, probes: int) -> Result:
    """The asyncio client without the ``fast`` extra (standard library base64)."""
    with stdlib_base64():
        return run_asyncio(url, turns, probes)


def run_trio(url: str, turns: int, probes: int) -> Result:
    import trio

    from kugelwire.transports.trio import connect_stream

    result: list[Result] = []

    async def main() -> None:
        result.append(await _kugelwire_async(url, turns, probes, connect_stream))

    trio.run(main)
    return result[0]


def run_sync(url: str, turns: int, probes: int) -> Result:
    from kugelwire.transports.sync import connect_stream

    with connect_stream(url, api_key=KEY, voice_id=1) as stream:

        async def turn(text: str) -> int:
            frames = 0
            t = stream.send_text(text, flush=True)
            assert t is not None
            for event in t:
                if type(event) is AudioChunk:
                    _mark(frames)
                    event.pcm16()
                    frames += 1
            return frames

        coro = _timed(turn, turns, probes)
        try:  # no event loop: the coroutine never suspends
            coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        raise AssertionError("the sync run suspended")


def run_sdk(url: str, turns: int, probes: int) -> Result:
    import kugelaudio

    async def main() -> Result:
        client = kugelaudio.KugelAudio(
            api_key=KEY, api_url=url.replace("ws://", "http://"), telemetry=False
        )
        try:
            async with client.tts.streaming_session(voice_id=1, model_id="kugel-3") as s:

                async def turn(text: str) -> int:
                    frames = 0
                    async for chunk in s.send(text, flush=True):
                        if chunk.audio:
                            _mark(frames)
                            frames += 1
                    return frames

                return await _timed(turn, turns, probes)
        finally:
            await client.aclose()

    return asyncio.run(main())


def run_websockets(url: str, turns: int, probes: int) -> Result:
    import websockets

    async def main() -> Result:
        uri = f"{url}/ws/tts/stream?api_key={KEY}"
        async with websockets.connect(uri, max_size=2**24, compression=None) as ws:
            first = [True]

            async def turn(text: str) -> int:
                msg: dict[str, Any] = {"text": text, "flush": True}
                if first[0]:  # the first frame of the session carries the config
                    msg["voice_id"] = 1
                    first[0] = False
                await ws.send(json.dumps(msg))
                frames = 0
                while True:
                    obj = json.loads(await ws.recv())
                    if "audio" in obj:
                        _mark(frames)
                        base64.b64decode(obj["audio"])
                        frames += 1
                    elif obj.get("session_closed"):
                        return frames

            return await _timed(turn, turns, probes)

    return asyncio.run(main())


CLIENTS: dict[str, Callable[[str, int, int], Result]] = {
    "websockets": run_websockets,
    "kugelwire asyncio": run_asyncio,
    "kugelwire asyncio [stdlib base64]": run_asyncio_stdlib,
    "kugelwire trio": run_trio,
    "kugelwire sync": run_sync,
    "official SDK": run_sdk,
}


def main() -> None:
    args = parse_args(__doc__)
    rounds, turns, probes = (2, 10, 30) if args.quick else (4, 120, 200)
    floor = floor_cpu(300 if args.quick else 1000)
    print(f"loopback: 200 ms frames, {turns} turns x {FRAMES} frames, {probes} latency probes; "
          f"fast extra (pybase64) {'installed' if FAST_BASE64 else 'not installed'}")
    figure("loopback: floor json.loads+b64decode per 200 ms frame", floor * 1e6, "us/frame")
    clients = {k: v for k, v in CLIENTS.items() if FAST_BASE64 or "stdlib" not in k}
    runs: dict[str, list[Result]] = {name: [] for name in clients}
    with ServerProcess("frames", FRAME_MS) as server:
        for _ in range(rounds):  # interleaved rounds: machine noise hits every client alike
            for name, run in clients.items():
                result = run(server.url, turns // rounds, probes // rounds)
                assert result[0] == turns // rounds * FRAMES, (name, result[0])
                runs[name].append(result)
    stats: dict[str, tuple[float, float, float, float]] = {}
    for name, results in runs.items():
        frames = sum(r[0] for r in results)
        wall = sum(r[1] for r in results)
        cpu = sum(r[2] for r in results)
        lat = [x for r in results for x in r[3]]
        stats[name] = (frames / wall, cpu / frames, median(lat), percentile(lat, 99))
    ws = stats["websockets"]
    sdk = stats["official SDK"]
    for name, (fps, cpu, lat50, lat99) in stats.items():
        ours = name.startswith("kugelwire")
        ratio = cpu / floor
        figure(f"loopback: {name} frames/s", fps, "frames/s",
               ">= 1.5x SDK" if ours else "", fps >= 1.5 * sdk[0] if ours else None,
               f"({fps / sdk[0]:.2f}x SDK)")
        figure(f"loopback: {name} client CPU per frame", cpu * 1e6, "us/frame")
        figure(f"loopback: {name} CPU/floor ratio", ratio, "x", "<= 1.3x" if ours else "",
               ratio <= 1.3 if ours else None)
        figure(f"loopback: {name} flush->first-audio median", lat50 * 1e3, "ms",
               "<= websockets+0.2 ms" if ours else "",
               lat50 <= ws[2] + 0.0002 if ours else None)
        figure(f"loopback: {name} flush->first-audio p99", lat99 * 1e3, "ms")


if __name__ == "__main__":
    main()
