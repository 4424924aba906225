"""Token forwarding: how long the application's "send this LLM token" call blocks when the
token completes a sentence, with audio consumed concurrently. Ours (asyncio ``send_text``)
vs the official SDK's ``send(token)`` (which reads audio inside the call). Loopback server in
a separate process (:class:`benchmarks._engine.FrameEngine`, 2 frames per sentence).

    python -m benchmarks.bench_tokens [--quick]
"""

from __future__ import annotations

import asyncio
import os
import time

from benchmarks._common import figure, median, parse_args
from benchmarks._engine import KEY, ServerProcess

os.environ.setdefault("KUGELAUDIO_TELEMETRY", "0")

SENTENCE = [" 2", " frames", " of", " audio", " for", " this", " short", " sentence."]


def _tokens(sentences: int) -> list[tuple[str, bool]]:
    """(token, completes a sentence) for ``sentences`` sentences."""
    out = []
    for _ in range(sentences):
        out += [(tok, tok.endswith(".")) for tok in SENTENCE]
    return out


async def ours(url: str, sentences: int) -> tuple[list[float], list[float], int]:
    from kugelwire.protocol.events import AudioChunk
    from kugelwire.transports.asyncio import connect_stream

    ends: list[float] = []
    others: list[float] = []
    frames = 0
    async with await connect_stream(url, api_key=KEY, voice_id=1) as stream:
        consumers: list[asyncio.Future[None]] = []

        async def consume(turn: object) -> None:
            nonlocal frames
            async for event in turn:  # type: ignore[attr-defined]
                if type(event) is AudioChunk:
                    event.pcm16()
                    frames += 1

        for token, end in _tokens(sentences):
            t0 = time.perf_counter()
            turn = await stream.send_text(token)
            (ends if end else others).append(time.perf_counter() - t0)
            if turn is not None and not consumers:
                consumers.append(asyncio.ensure_future(consume(turn)))
            await asyncio.sleep(0.02)  # an LLM's token pace
        await stream.flush()
        await asyncio.gather(*consumers)
    return ends, others, frames


async def sdk(url: str, sentences: int) -> tuple[list[float], list[float], int]:
    import kugelaudio

    ends: list[float] = []
    others: list[float] = []
    frames = 0
    client = kugelaudio.KugelAudio(
        api_key=KEY, api_url=url.replace("ws://", "http://"), telemetry=False
    )
    try:
        async with client.tts.streaming_session(voice_id=1, model_id="kugel-3") as s:
            for token, end in _tokens(sentences):
                t0 = time.perf_counter()
                frames += len([c async for c in s.send(token)])  # audio comes out of send()
                (ends if end else others).append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)
            frames += len([c async for c in s.flush()])
    finally:
        await client.aclose()
    return ends, others, frames


def main() -> None:
    args = parse_args(__doc__)
    n_ours, n_sdk = (10, 2) if args.quick else (30, 4)
    with ServerProcess("frames", 200) as server:
        o_end, o_other, o_frames = asyncio.run(ours(server.url, n_ours))
        s_end, s_other, s_frames = asyncio.run(sdk(server.url, n_sdk))
    print(f"token forwarding: {n_ours} sentences (ours), {n_sdk} (SDK), 20 ms token pace")
    figure("tokens: ours send_text(sentence-end token) median", median(o_end) * 1e3, "ms",
           "< 1 ms", median(o_end) < 0.001, f"(max {max(o_end) * 1e3:.2f} ms, "
           f"{o_frames} frames consumed concurrently)")
    figure("tokens: ours send_text(other token) median", median(o_other) * 1e3, "ms")
    figure("tokens: SDK send(sentence-end token) median", median(s_end) * 1e3, "ms", "",
           None, f"(max {max(s_end) * 1e3:.0f} ms)")
    figure("tokens: SDK send(other token) median", median(s_other) * 1e3, "ms", "", None,
           f"(max {max(s_other) * 1e3:.0f} ms, {s_frames} frames)")
    figure("tokens: SDK/ours blocking ratio (sentence-end, median)",
           median(s_end) / median(o_end), "x")


if __name__ == "__main__":
    main()
