"""Two speakers on one socket: /ws/tts/multi contexts, each with its own voice and audio.

A narrator and a character speak in turns over one connection; each context's audio comes
back on its own event stream (frames of the two interleave on the wire). Every context is
closed when its part is over: contexts count toward the cap of 20 until they are.

    python examples/multi_context.py [--url ws://127.0.0.1:8765] [--out story.wav]
"""

from __future__ import annotations

import asyncio
import wave

from _local import arguments, server_url

from kugelwire.protocol.events import AudioChunk, ContextClosed, Interrupted
from kugelwire.transports.asyncio import AsyncContext, connect_multi

SCRIPT = [
    ("narrator", "The door creaked open."),
    ("hero", "Is anybody there?"),
    ("narrator", "Nobody answered. The hero stepped inside."),
]


async def collect(ctx: AsyncContext) -> bytes:
    pcm = bytearray()
    async for event in ctx:  # ends with ContextClosed
        if isinstance(event, AudioChunk):
            pcm += event.pcm16()
        elif isinstance(event, ContextClosed):
            print(f"{ctx.context_id}: closed, usage {event.usage}")
        elif isinstance(event, Interrupted):
            print(f"{ctx.context_id}: interrupted")
    return bytes(pcm)


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], out="story.wav").parse_args()
    with server_url(args) as url:
        async with await connect_multi(url, api_key=args.api_key, language="en",
                                       sample_rate=24000) as multi:
            voices = {"narrator": args.voice, "hero": args.voice + 1}
            contexts = {name: await multi.create_context(name, voice_id=voice)
                        for name, voice in voices.items()}
            tasks = {name: asyncio.create_task(collect(ctx)) for name, ctx in contexts.items()}
            for name, line in SCRIPT:
                await contexts[name].send_text(line, flush=True)  # one flush per line
            for ctx in contexts.values():
                await ctx.close()  # graceful: the rest is spoken, then context_closed
            audio = {name: await task for name, task in tasks.items()}
    with wave.open(args.out, "wb") as out:  # the narrator's part, then the hero's
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        for name in voices:
            print(f"{name}: {len(audio[name]) / 48000:.2f} s of audio")
            out.writeframes(audio[name])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
