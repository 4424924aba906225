"""The rule checks' cost: a server session with and without the linter, in the same run.

Per client token message (``{"text": "abc "}``, what an LLM integration sends most) and per
engine audio hand-off (``send_audio`` of a 200 ms block, framed and drained), both measured on
the bare session (the anchor) and on the same session wrapped by :class:`kugelwire.lint.Linter`.
No sockets; the linter's sinks are off (logging is the caller's cost either way).

    python -m benchmarks.bench_lint [--quick]
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks._common import figure, parse_args
from kugelwire.lint import Linter
from kugelwire.protocol import StreamServerSession, SynthesisRequested

WORDS = ["abc ", "def ", "ghi ", "jkl ", "mno ", "pqr ", "stu ", "vw. ", "Xyz "]
TOKENS = [json.dumps({"text": w}) for w in WORDS]
PCM = b"\x01\x02" * 4800  # 200 ms at 24 kHz


def session(lint: bool) -> Any:
    bare = StreamServerSession()
    if not lint:
        return bare
    return Linter(on_finding=None, on_summary=None).wrap(bare, "/ws/tts/stream", now=0.0)


def tokens(lint: bool, turns: int, per_turn: int) -> float:
    """Seconds per token message (receive + drain the outbox, as a connection does)."""
    s = session(lint)
    spent, sent, now = 0.0, 0, 10.0
    for _ in range(turns):
        s.receive_message('{"text": " ", "voice_id": 1, "language": "en"}', now)
        batch = [TOKENS[i % len(TOKENS)] for i in range(per_turn)]
        receive, drain = s.receive_message, s.messages_to_send
        t0 = time.perf_counter()
        for msg in batch:
            receive(msg, now)
            drain()
        spent += time.perf_counter() - t0
        sent += len(batch)
        s.receive_message('{"flush": true}', now)
        while True:
            requests = [e for e in s.events() if isinstance(e, SynthesisRequested)]
            s.messages_to_send()
            if not requests:
                break
            for req in requests:
                s.send_audio(req.ref, b"\0\0" * 480, now)
                s.complete_chunk(req.ref, 1.0, now)
        s.messages_to_send()
        now += 10.0
    return spent / sent


def audio(lint: bool, blocks: int) -> float:
    """Seconds per 200 ms audio block handed in and drained (one turn, one chunk)."""
    s = session(lint)
    s.receive_message('{"text": "Hello there, a long chunk.", "flush": true, '
                      '"voice_id": 1, "language": "en"}', 1.0)
    [req] = [e for e in s.events() if isinstance(e, SynthesisRequested)]
    s.messages_to_send()
    send, drain = s.send_audio, s.messages_to_send
    t0 = time.perf_counter()
    for _ in range(blocks):
        send(req.ref, PCM, 1.0)
        drain()
    return (time.perf_counter() - t0) / blocks


class _Stub:
    """A session whose outbox always holds one 200 ms audio frame (isolates the wrapper)."""

    close_code = None

    def __init__(self, frame: str) -> None:
        self._out = [frame]

    def messages_to_send(self) -> list[str]:
        return self._out

    def send_audio(self, ref: Any, pcm: bytes, now: float) -> bool:
        return True


def observation(lint: bool, n: int) -> float:
    """Seconds per send_audio + messages_to_send of one audio frame on a stub session: the
    wrapper's own cost (lint) against the bare calls, without the session's work."""
    bare = StreamServerSession()
    bare.receive_message('{"text": "Hi.", "flush": true, "voice_id": 1}', 1.0)
    [req] = [e for e in bare.events() if isinstance(e, SynthesisRequested)]
    bare.messages_to_send()
    bare.send_audio(req.ref, PCM, 1.0)
    frame = bare.messages_to_send()[0]
    stub: Any = _Stub(frame)
    s: Any = stub
    if lint:
        s = Linter(on_finding=None, on_summary=None).wrap(stub, "/ws/tts/stream", now=0.0)
    send, drain = s.send_audio, s.messages_to_send
    t0 = time.perf_counter()
    for _ in range(n):
        send(None, PCM, 1.0)
        drain()
    return (time.perf_counter() - t0) / n


def main() -> None:
    args = parse_args(__doc__)
    quick = args.quick
    per_turn, turns, blocks, rounds = (300, 3, 300, 5) if quick else (1000, 3, 300, 15)
    print("lint: server session with and without the rule checks (same run)")
    # alternate the two in every round so load changes hit both alike
    bare_t = lint_t = bare_a = lint_a = float("inf")
    for _ in range(rounds):
        bare_t = min(bare_t, tokens(False, turns, per_turn))
        lint_t = min(lint_t, tokens(True, turns, per_turn))
        bare_a = min(bare_a, audio(False, blocks))
        lint_a = min(lint_a, audio(True, blocks))
    figure("lint: per token message, bare session", bare_t * 1e6, "us/token")
    figure("lint: per token message, with the linter", lint_t * 1e6, "us/token")
    figure("lint: token overhead ratio", lint_t / bare_t, "x", "<= 2x", lint_t / bare_t <= 2)
    figure("lint: per 200 ms audio block, bare session", bare_a * 1e6, "us/block")
    figure("lint: per 200 ms audio block, with the linter", lint_a * 1e6, "us/block")
    figure("lint: audio overhead ratio (end to end, noisy)", lint_a / bare_a, "x")
    # the wrapper's own cost per audio frame, measured alone (stable), against the bare block
    n = 20_000 if quick else 100_000
    extra = min(observation(True, n) - observation(False, n) for _ in range(rounds))
    figure("lint: wrapper cost per audio frame", extra * 1e6, "us/frame")
    ratio = (bare_a + max(0.0, extra)) / bare_a
    figure("lint: audio overhead ratio (wrapper cost / bare block)", ratio, "x", "<= 1.1x",
           ratio <= 1.1)


if __name__ == "__main__":
    main()
