"""kugelwire's sans-IO session on the websockets library: one-shot requests on /ws/tts.

The session decides everything about the protocol (request order, which frames belong to which
request, the cancel timer); websockets only moves the JSON text messages. Two requests are sent
at once and come back in order, each ending with its ``final`` (statistics and usage); they are
saved as ``<out>-0.wav`` and ``<out>-1.wav``. docs/websocket-libraries.md shows the streaming
endpoint on websockets and on trio-websocket.

    python examples/message_level_websockets.py [--url ws://127.0.0.1:8765] [--out request]
"""

from __future__ import annotations

import asyncio
import wave

from _local import arguments, server_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kugelwire.protocol import TTSClientSession, build_url
from kugelwire.protocol.events import (
    AudioChunk,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnAborted,
)

TEXTS = ["The first request, spoken in full.", "And a second one, queued behind it."]


async def synthesize(url: str, api_key: str | None, voice: int) -> dict[int, bytearray]:
    loop = asyncio.get_running_loop()
    session = TTSClientSession(voice_id=voice, language="en", sample_rate=24000)
    audio: dict[int, bytearray] = {}
    async with connect(build_url(url, "/ws/tts", api_key), proxy=None) as ws:
        for text in TEXTS:
            audio[session.request(text, now=loop.time())] = bytearray()
        while True:
            for message in session.messages_to_send():  # after every call into the session
                await ws.send(message)
            for event in session.events():
                if isinstance(event, AudioChunk):
                    audio[event.turn] += event.pcm16()
                elif isinstance(event, RequestFinal):
                    print(f"request {event.turn}: {event.dur_ms} ms of audio in "
                          f"{event.gen_ms} ms; usage {event.usage}")
                elif isinstance(event, ServerError | Interrupted | TurnAborted):
                    raise RuntimeError(f"request {event.turn} failed: {event}")
            if not session.pending_requests or session.terminated:
                return audio
            deadline = session.next_deadline()  # the cancel timer, when a cancel is pending
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                message = await asyncio.wait_for(ws.recv(), timeout)
            except asyncio.TimeoutError:
                session.handle_timeout(loop.time())
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                session.connection_lost(code, exc.rcvd.reason if exc.rcvd else "", loop.time())
            else:
                session.receive_message(str(message), loop.time())


def main() -> None:
    args = arguments(__doc__.splitlines()[0], out="request").parse_args()
    with server_url(args) as url:
        audio = asyncio.run(synthesize(url, args.api_key, args.voice))
    for number, pcm in audio.items():
        path = f"{args.out}-{number}.wav"
        with wave.open(path, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(24000)
            out.writeframes(bytes(pcm))
        print(f"wrote {path}: {len(pcm) / 48000:.2f} s")


if __name__ == "__main__":
    main()
