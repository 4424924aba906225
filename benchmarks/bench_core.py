"""Core (sans-IO) figures: client parse+dispatch per audio frame, server per-token handling,
chunker scaling. No sockets; CPU time of this process only.

    python -m benchmarks.bench_core [--quick]
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

from benchmarks._common import FAST_BASE64, best_of, figure, parse_args, stdlib_base64
from kugelwire.protocol.events import AudioChunk
from kugelwire.protocol.messages import AudioFrame
from kugelwire.protocol.sessions import StreamClientSession, StreamServerSession, SynthesisRequested
from kugelwire.protocol.text import Chunker

SR = 24000


@dataclass(frozen=True)
class Api:
    """The classes the figures use, from one kugelwire package (:mod:`benchmarks.bench_ab`
    passes an older revision's, imported under another name)."""

    Chunker: Any
    StreamClientSession: Any
    AudioChunk: Any
    StreamServerSession: Any
    SynthesisRequested: Any

    @classmethod
    def of(cls, protocol: ModuleType) -> Api:
        """The names looked up on a package's ``protocol`` namespace (every revision has them
        there)."""
        return cls(*(getattr(protocol, f.name) for f in fields(cls)))


#: This tree's classes.
CURRENT = Api(Chunker, StreamClientSession, AudioChunk, StreamServerSession, SynthesisRequested)


def audio_text(frame_ms: int, idx: int = 0) -> str:
    """One server audio frame of ``frame_ms`` of 24 kHz PCM16 (noise-like, as JSON text)."""
    samples = SR * frame_ms // 1000
    pcm = bytes((i * 7919 + idx) & 0xFF for i in range(samples * 2))
    return AudioFrame.from_bytes(pcm, idx=idx, sr=SR, chunk_id=0).to_json()


def per_frame(fn: Callable[[], None], n: int) -> float:
    """CPU seconds per call of ``fn`` over ``n`` calls."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def turn_texts(frame_ms: int, n: int) -> list[str]:
    """The ``n`` audio frames of one turn: idx 0, 1, 2... (a repeated idx is dropped, not
    delivered)."""
    text = audio_text(frame_ms)
    assert text.count('"idx":0,') == 1
    return [text.replace('"idx":0,', f'"idx":{i},') for i in range(n)]


def client_run(texts: list[str], api: Api = CURRENT) -> float:
    """CPU seconds per frame: a stream session receives ``texts`` in one turn, each event is
    dispatched and its ``pcm16()`` decoded."""
    session = api.StreamClientSession(voice_id=1)
    session.send_text("Hello there.", 0.0, flush=True)
    session.messages_to_send()
    for _ in session.events():
        pass
    # the session's event queue, read directly: what a transport's loop does, without the
    # generator of events() per frame
    receive, events = session.receive_message, session._events
    popleft = events.popleft
    frames = iter(texts)
    chunk_type = api.AudioChunk

    def ours() -> None:
        receive(next(frames), 1.0)
        while events:
            event = popleft()
            if type(event) is chunk_type:
                event.pcm16()
            else:
                raise AssertionError(f"not an audio chunk: {event!r}")

    return per_frame(ours, len(texts))


def client_dispatch(frame_ms: int, n: int, repeats: int) -> tuple[float, float]:
    texts = turn_texts(frame_ms, n)
    text = texts[0]

    def floor() -> None:
        base64.b64decode(json.loads(text)["audio"])

    ours = best_of(lambda: client_run(texts), repeats)
    return best_of(lambda: per_frame(floor, n), repeats), ours


def server_tokens(
    turns: int,
    tokens_per_turn: int,
    api: Api = CURRENT,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per 4-character token message (``{"text": "abc "}``) in a live turn, by
    ``clock``."""
    session = api.StreamServerSession()
    words = ["abc ", "def ", "ghi ", "jkl ", "mno ", "pqr ", "stu ", "vw. ", "Xyz "]
    messages = [json.dumps({"text": w}) for w in words]
    first = json.dumps({"text": " ", "voice_id": 1})
    spent = 0.0
    sent = 0
    now = 0.0
    for _ in range(turns):
        session.receive_message(first, now)
        batch = [messages[i % len(messages)] for i in range(tokens_per_turn)]
        receive = session.receive_message
        t0 = clock()
        for msg in batch:
            receive(msg, now)
        spent += clock() - t0
        sent += len(batch)
        session.receive_message('{"flush": true}', now)
        # complete every chunk so the turn closes (the engine's part, not timed)
        while True:
            events = list(session.events())
            requests = [e for e in events if isinstance(e, api.SynthesisRequested)]
            session.messages_to_send()
            if not requests:
                break
            for req in requests:
                session.send_audio(req.ref, b"\0\0" * 480, now)
                session.complete_chunk(req.ref, 1.0, now)
        session.messages_to_send()
        now += 1.0
    return spent / sent


def chunker_time(
    chars: int, api: Api = CURRENT, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds (by ``clock``) the chunker takes for ``chars`` characters in 4-character
    tokens, then a flush."""
    sentence = "The quick brown fox jumps over the lazy dog, again and again. "
    tokens = [sentence[i : i + 4] for i in range(0, len(sentence), 4)]
    reps = chars // len(sentence)
    stream = tokens * reps
    chunker = api.Chunker()
    t0 = clock()
    for tok in stream:
        chunker.feed(tok, 0.0)
    chunker.flush(0.0)
    return clock() - t0


def main() -> None:
    args = parse_args(__doc__)
    quick = args.quick
    print("core: client parse+dispatch per audio frame (incl. base64 decode via pcm16()); "
          f"fast extra (pybase64) {'installed' if FAST_BASE64 else 'not installed'}")
    variants: list[tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]]
    variants = [("", contextlib.nullcontext)]
    if FAST_BASE64:
        variants = [(" [pybase64]", contextlib.nullcontext), (" [stdlib base64]", stdlib_base64)]
    for frame_ms, n in ((20, 4000), (200, 1000), (1000, 200)):
        n = n // 4 if quick else n
        for label, codec in variants:
            with codec():
                floor, ours = client_dispatch(frame_ms, n, 3 if quick else 5)
            if label != variants[-1][0]:
                figure(f"core: floor json.loads+b64decode, {frame_ms} ms frame", floor * 1e6,
                       "us/frame")
            figure(f"core: client receive+dispatch+pcm16, {frame_ms} ms frame{label}",
                   ours * 1e6, "us/frame")
            ratio = ours / floor
            figure(f"core: client/floor ratio, {frame_ms} ms frame{label}", ratio, "x",
                   "<= 1.3x", ratio <= 1.3)
    print("core: server per-token handling (StreamServerSession.receive_message)")
    per_token = min(server_tokens(5, 400 if quick else 1000) for _ in range(3))
    figure("core: server per 4-char token message", per_token * 1e6, "us/token", "<= 10 us",
           per_token * 1e6 <= 10)
    print("core: chunker scaling (N vs 2N characters)")
    n = 100_000 if quick else 400_000
    t1 = min(chunker_time(n) for _ in range(3))
    t2 = min(chunker_time(2 * n) for _ in range(3))
    figure(f"core: chunker {n:,} chars", t1 * 1e3, "ms")
    figure(f"core: chunker 2N/N time ratio (N={n:,})", t2 / t1, "x", "~2 (1.7-2.3)",
           1.7 <= t2 / t1 <= 2.3)


if __name__ == "__main__":
    main()
