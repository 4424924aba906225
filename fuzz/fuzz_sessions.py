"""Coverage-guided fuzzing of every session's input path (atheris), in the style of websockets'
``fuzzing/`` harnesses.

    pip install atheris
    python fuzz/fuzz_sessions.py -max_total_time=60

Without atheris, ``python fuzz/fuzz_sessions.py N`` runs N random inputs. The property is the
one the sessions promise: bad peer input raises :class:`RemoteProtocolError` (or
:class:`ProtocolError` for server-side frame errors answered on the wire) and nothing else
escapes; the session keeps working afterwards. ``tests/test_fuzz_harness.py`` runs the same
``one_input`` under hypothesis in CI.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys

from kugelwire.protocol import (
    MultiClientSession,
    MultiServerSession,
    ProtocolError,
    StreamClientSession,
    StreamServerSession,
    TTSClientSession,
    TTSServerSession,
)

SEEDS = [
    b'{"text": "Hello there. How are you?", "flush": true}',
    b'{"text": " ", "context_id": "a", "voice_settings": {"voice_id": 1}}',
    b'{"cancel": true}',
    b'{"audio": "AAAA", "enc": "pcm_s16le", "idx": 0, "sr": 24000, "samples": 2}',
    b'{"final": true, "total_audio_seconds": 0.1}',
    b'{"session_closed": true, "usage": {"audio_seconds": 0.1, "characters": 3}}',
    b'{"update_settings": {"speed": 1.2}}',
    b'{"close_context": true, "context_id": "a", "immediate": true}',
]


def _sessions() -> list[object]:
    client_stream = StreamClientSession(voice_id=1)
    client_stream.send_text("Hello", 0.0)
    client_multi = MultiClientSession()
    client_multi.create_context("a", 0.0, voice_id=1)
    client_tts = TTSClientSession()
    client_tts.request("Hello", 0.0)
    return [
        client_stream,
        client_multi,
        client_tts,
        StreamServerSession(),
        MultiServerSession(),
        TTSServerSession(),
    ]


def one_input(data: bytes) -> None:
    """Feed ``data`` (split on NUL into messages) to every session kind, with timers between."""
    messages = data.split(b"\x00")[:16]
    for session in _sessions():
        now = 0.0
        for raw in messages:
            text = raw.decode("utf-8", "replace")
            now += 0.25
            with contextlib.suppress(ProtocolError):  # the only permitted failure
                session.receive_message(text, now)  # type: ignore[attr-defined]
            session.handle_timeout(now)  # type: ignore[attr-defined]
            for out in session.messages_to_send():  # type: ignore[attr-defined]
                json.loads(out)  # everything we send is valid JSON
            list(session.events())  # type: ignore[attr-defined]
        deadline = session.next_deadline()  # type: ignore[attr-defined]
        if deadline is not None:
            session.handle_timeout(deadline)  # type: ignore[attr-defined]


def _random_input(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 6)):
        seed = bytearray(rng.choice(SEEDS))
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            pos = rng.randrange(len(seed) + 1)
            if op < 0.4 and seed:
                seed[min(pos, len(seed) - 1)] = rng.randrange(256)
            elif op < 0.7:
                seed[pos:pos] = bytes([rng.randrange(256)])
            else:
                del seed[pos : pos + rng.randint(1, 8)]
        parts.append(bytes(seed))
    return b"\x00".join(parts)


def main() -> None:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
        rng = random.Random(0)
        for _ in range(n):
            one_input(_random_input(rng))
        print(f"{n} random inputs, no unexpected exception")
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
