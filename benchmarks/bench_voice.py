"""Embedded voice: sentence-end -> first audio with the eSpeak engine
(:class:`kugelwire.synth.EspeakEngine`) on loopback (server in its own process, our asyncio
client). Prints SKIP when the engine cannot be imported.

    python -m benchmarks.bench_voice [--quick]
"""

from __future__ import annotations

import asyncio
import time

from benchmarks._common import figure, median, parse_args, percentile, skip
from benchmarks._engine import KEY, ServerProcess
from kugelwire.protocol.events import AudioChunk
from kugelwire.transports.asyncio import connect_stream

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech starts before the sentence is over.",
    "Good morning, how can I help you today?",
]


async def _probe(url: str, n: int) -> list[float]:
    out = []
    async with await connect_stream(url, api_key=KEY, voice_id=1) as stream:
        for i in range(n + 1):
            t0 = time.perf_counter()
            turn = await stream.send_text(SENTENCES[i % len(SENTENCES)], flush=True)
            first = None
            assert turn is not None
            async for event in turn:
                if first is None and type(event) is AudioChunk:
                    first = time.perf_counter() - t0
            if i and first is not None:  # the first turn warms the engine up
                out.append(first)
    return out


def main() -> None:
    args = parse_args(__doc__)
    name = "voice: eSpeak sentence-end->first-audio"
    try:
        from kugelwire.synth import EspeakEngine  # noqa: F401
    except Exception as exc:  # the helper writing it may not be done; or the extra is missing
        skip(name + " median", f"EspeakEngine not importable: {exc}")
        return
    n = 10 if args.quick else 30
    with ServerProcess("espeak", 200) as server:
        lat = asyncio.run(_probe(server.url, n))
    print(f"voice: {n} sentences, flush at the sentence end, loopback")
    figure(name + " median", median(lat) * 1e3, "ms")
    figure(name + " p99", percentile(lat, 99) * 1e3, "ms")


if __name__ == "__main__":
    main()
