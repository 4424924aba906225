"""A Pipecat pipeline speaking through kugelwire, fully offline.

Start a local server in one terminal, run the pipeline in another (no keys, no network)::

    kugelwire serve                      # ws://127.0.0.1:8765, any API key
    python examples/pipecat_offline.py   # writes pipecat_offline.wav

(or ``python examples/pipecat_offline.py --serve`` to run a server inside this process).
Needs ``pip install 'kugelwire[pipecat]'``.

The pipeline is ``fake LLM -> KugelwireTTSService -> sink``: the fake LLM streams two answers
token by token, and the user "barges in" on the second one. The sink writes the audio to a WAV
file and prints each word when Pipecat times it (word timestamps, relative to the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import wave

from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from kugelwire.integrations.pipecat import KugelwireTTSService

ANSWERS = [
    "Sure, your table is booked for eight people. Is there anything else I can do?",
    "We open at noon on Sundays. The kitchen closes at ten in the evening, and on holidays",
]


class Sink(FrameProcessor):
    """Collects the audio and prints the words as Pipecat times them."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()
        self.started_at: int | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSStartedFrame):
            self.started_at = None
            print("-- answer", flush=True)
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio += frame.audio
        elif isinstance(frame, TTSTextFrame) and frame.pts is not None:
            self.started_at = frame.pts if self.started_at is None else self.started_at
            print(f"{(frame.pts - self.started_at) / 1e9:6.2f}s  {frame.text}", flush=True)
        elif isinstance(frame, InterruptionFrame):
            print("-- the user interrupts", flush=True)
        await self.push_frame(frame, direction)


async def main(args: argparse.Namespace) -> None:
    tts = KugelwireTTSService(api_key=args.api_key, voice_id=args.voice, url=args.url,
                              language="en", sample_rate=args.sample_rate)
    sink = Sink()
    worker = PipelineWorker(Pipeline([tts, sink]), cancel_on_idle_timeout=False,
                            params=PipelineParams(audio_out_sample_rate=args.sample_rate))
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    async def fake_llm() -> None:
        await started.wait()
        for n, answer in enumerate(ANSWERS):
            await worker.queue_frame(LLMFullResponseStartFrame())
            for word in answer.split():
                await worker.queue_frame(LLMTextFrame(word + " "))
                await asyncio.sleep(0.02)  # an LLM's token rate
            if n == len(ANSWERS) - 1:
                await asyncio.sleep(0.8)
                await worker.queue_frame(InterruptionFrame())  # barge-in mid-sentence
            else:
                await worker.queue_frame(LLMFullResponseEndFrame())
                await asyncio.sleep(2.0)
        await asyncio.sleep(0.5)
        await worker.stop_when_done()

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), fake_llm())
    with wave.open(args.out, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(args.sample_rate)
        out.writeframes(bytes(sink.audio))
    print(f"wrote {args.out}: {len(sink.audio) / 2 / args.sample_rate:.2f} s of audio")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--api-key", default="local")
    parser.add_argument("--voice", type=int, default=1)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--out", default="pipecat_offline.wav")
    parser.add_argument("--serve", action="store_true", help="run a local server in-process")
    arguments = parser.parse_args()
    if arguments.serve:
        from kugelwire.server import run_in_thread

        with run_in_thread() as server:
            arguments.url = server.url
            asyncio.run(main(arguments))
    else:
        asyncio.run(main(arguments))
