"""A LiveKit Agents session speaking through kugelwire, fully offline.

Start a local server in one terminal, run the agent in another (no LiveKit server, no keys, no
network)::

    kugelwire serve                      # ws://127.0.0.1:8765, any API key
    python examples/livekit_offline.py   # writes livekit_offline.wav

(or ``python examples/livekit_offline.py --serve`` to run a server inside this process).
Needs ``pip install 'kugelwire[livekit]'``.

The agent runs in-process (LiveKit's ``fake_job_context``, no worker and no room): an
``AgentSession`` with kugelwire's ``TTS`` speaks two answers streamed token by token like an LLM,
and the user "barges in" on the second one. A small audio output writes what would be played
to a WAV file; the transcript LiveKit synchronises from the aligned word timestamps is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import wave
from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice import io

from kugelwire.integrations.livekit import TTS

ANSWERS = [
    "Sure, your table is booked for eight people. Is there anything else I can do?",
    "We open at noon on Sundays. The kitchen closes at ten in the evening, and on holidays",
]


class WavOutput(io.AudioOutput):
    """An audio sink that plays in real time into a buffer (what a room would hear)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(label="wav", capabilities=io.AudioOutputCapabilities(pause=False),
                         sample_rate=sample_rate)
        self.audio = bytearray()
        self._segment = 0.0
        self._playing = False  # a segment was captured and not yet finished

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._playing = True
        self.audio += frame.data.tobytes()
        self._segment += frame.duration
        await asyncio.sleep(frame.duration)  # playing takes as long as the audio lasts

    def flush(self) -> None:
        super().flush()
        self._finished(interrupted=False)

    def clear_buffer(self) -> None:
        self._finished(interrupted=True)

    def _finished(self, *, interrupted: bool) -> None:
        if self._playing:
            self.on_playback_finished(playback_position=self._segment, interrupted=interrupted)
        self._playing, self._segment = False, 0.0


async def llm_tokens(text: str) -> AsyncIterator[str]:
    for word in text.split():
        yield word + " "
        await asyncio.sleep(0.02)  # an LLM's token rate


async def main(args: argparse.Namespace) -> None:
    tts = TTS(api_key=args.api_key, voice_id=args.voice, url=args.url, language="en",
              sample_rate=args.sample_rate)
    session: AgentSession = AgentSession(tts=tts, use_tts_aligned_transcript=True)
    output = WavOutput(args.sample_rate)
    session.output.audio = output

    @session.on("conversation_item_added")
    def _said(event: object) -> None:
        item = getattr(event, "item", None)
        if getattr(item, "text_content", ""):
            print(f"agent said: {getattr(item, 'text_content', '')!r}"
                  f"{' (interrupted)' if getattr(item, 'interrupted', False) else ''}",
                  flush=True)

    await session.start(agent=Agent(instructions="A restaurant's booking assistant."))
    tts.prewarm()
    await session.say(llm_tokens(ANSWERS[0]))
    handle = session.say(llm_tokens(ANSWERS[1]))
    await asyncio.sleep(1.0)
    handle.interrupt()  # the user barges in: the stream is closed, its context at once
    await handle
    await session.aclose()
    await tts.aclose()
    with wave.open(args.out, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(args.sample_rate)
        out.writeframes(bytes(output.audio))
    print(f"wrote {args.out}: {len(output.audio) / 2 / args.sample_rate:.2f} s of audio")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--api-key", default="local")
    parser.add_argument("--voice", type=int, default=1)
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--out", default="livekit_offline.wav")
    parser.add_argument("--serve", action="store_true", help="run a local server in-process")
    arguments = parser.parse_args()
    with fake_job_context():
        if arguments.serve:
            from kugelwire.server import run_in_thread

            with run_in_thread() as server:
                arguments.url = server.url
                asyncio.run(main(arguments))
        else:
            asyncio.run(main(arguments))
