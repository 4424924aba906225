"""Barge-in: the user talks over the agent, and not one more sample of the old turn plays.

A long turn starts speaking; when the first half second of audio has arrived, the "user"
interrupts: ``cancel()`` returns, and from that moment the turn hands out no audio (frames
still in flight are dropped), and ends with ``Interrupted``. The same connection then speaks
the agent's short answer as the next turn.

    python examples/barge_in.py [--url ws://127.0.0.1:8765] [--out answer.wav]
"""

from __future__ import annotations

import asyncio
import wave

from _local import arguments, server_url

from kugelwire.protocol.events import AudioChunk, Interrupted, TurnClosed
from kugelwire.transports.asyncio import connect_stream

LONG_TURN = " ".join(["Let me tell you about every single opening hour of every branch."] * 8)
ANSWER = "Of course, go ahead."


async def main() -> None:
    args = arguments(__doc__.splitlines()[0], out="answer.wav").parse_args()
    with server_url(args) as url:
        async with await connect_stream(url, api_key=args.api_key, voice_id=args.voice,
                                        language="en", sample_rate=24000) as stream:
            turn = await stream.send_text(LONG_TURN, flush=True)
            assert turn is not None
            heard = 0.0
            async for event in turn:
                if isinstance(event, AudioChunk):
                    heard += event.duration_s
                    if heard >= 0.5:
                        break  # the user starts talking
            await stream.cancel()  # barge-in: nothing of that turn is handed out after this
            rest = await turn.collect()  # what the turn still hands out: its terminal event
            dropped = sum(isinstance(e, AudioChunk) for e in rest)
            print(f"heard {heard:.2f} s of the long turn; after the cancel: {dropped} audio "
                  f"frames, then {type(rest[-1]).__name__}")
            assert dropped == 0 and isinstance(rest[-1], Interrupted)

            answer = await stream.send_text(ANSWER, flush=True)  # the next turn, same socket
            assert answer is not None
            events = await answer.collect()
            assert isinstance(events[-1], TurnClosed), events[-1]
    with wave.open(args.out, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        for event in events:
            if isinstance(event, AudioChunk):
                out.writeframes(event.pcm16())
    print(f"wrote {args.out} (the answer)")


if __name__ == "__main__":
    asyncio.run(main())
