"""Stream one turn the way a voice agent does, and save the audio to a WAV file.

The tokens of a (simulated) LLM reply go out the moment they exist, unflushed; one flush ends
the turn; a task saves the audio while tokens are still being sent. Prints the time to first
audio and the usage.

    python examples/stream_turn_to_wav.py [--url ws://127.0.0.1:8765] [--out turn.wav]
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator

from _local import arguments, server_url

from kugelwire.protocol.events import AudioChunk, TurnClosed
from kugelwire.transports.asyncio import AsyncTurn, connect_stream

REPLY = ("Sure! Your table for two is booked for seven thirty tonight. "
         "You will get a confirmation at <spell>ab@cd.io</spell> in a minute.")


async def llm_reply() -> AsyncIterator[str]:
    """Stand-in for a language model: the reply, word by word, 20 ms apart."""
    for i, word in enumerate(REPLY.split(" ")):
        await asyncio.sleep(0.02)
        yield word if i == 0 else " " + word


async def save(turn: AsyncTurn, path: str, started: float) -> None:
    first_audio = None
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        async for event in turn:  # ends with TurnClosed (or Interrupted after a cancel)
            if isinstance(event, AudioChunk):
                if first_audio is None:
                    first_audio = time.perf_counter()
                    print(f"first audio {1000 * (first_audio - started):.0f} ms after the "
                          "first token")
                out.writeframes(event.pcm16())
            elif isinstance(event, TurnClosed):
                print(f"turn {event.turn}: {event.total_audio_seconds:.2f} s of audio; "
                      f"usage: {event.usage}")


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], out="turn.wav").parse_args()
    with server_url(args) as url:
        # pre-connect before the user speaks: the handshake is not on the turn's latency
        async with await connect_stream(url, api_key=args.api_key, voice_id=args.voice,
                                        language="en", sample_rate=24000) as stream:
            saving = None
            started = time.perf_counter()
            async for token in llm_reply():
                turn = await stream.send_text(token)  # never waits for audio, never flushes
                if saving is None and turn is not None:
                    saving = asyncio.create_task(save(turn, args.out, started))
            await stream.flush()  # exactly once, at the end of the turn
            assert saving is not None
            await saving
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
