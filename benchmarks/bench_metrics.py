"""Cost of the server's metrics observer, per turn, at the session level (no sockets).

One ``/ws/tts/stream`` turn (7 LLM tokens, a flush, 5 engine pieces of 200 ms, the chunk's
``chunk_complete``, ``final`` and ``session_closed``) driven straight through the sans-IO
session, in three set-ups measured in the same run: the bare core session (the anchor), the
session wrapped by the observer with metrics off (what every server session gets: it only
watches for error frames to log) and with metrics on. CPU time (``process_time``), best of
several rounds, so other processes on the machine disturb it less.

    python -m benchmarks.bench_metrics [--quick]
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks._common import figure, parse_args
from kugelwire.protocol.sessions import StreamServerSession
from kugelwire.server import Metrics, ServerOptions
from kugelwire.synth import ToneEngine

TOKENS = ["Hello", " there,", " this", " is", " one", " short", " sentence."]
FRAMES = [json.dumps({"text": token}) for token in TOKENS]
PCM = bytes(4800 * 2)  # 200 ms at 24 kHz


def _session(kind: str) -> Any:
    if kind == "bare":
        return StreamServerSession()
    metrics = Metrics() if kind == "on" else None
    return ServerOptions(engine=ToneEngine(), metrics=metrics).new_session("/ws/tts/stream")


def per_turn_us(kind: str, turns: int) -> float:
    s = _session(kind)
    now = 0.0
    t0 = time.process_time()
    for _ in range(turns):
        for frame in FRAMES:
            now += 0.01
            s.receive_message(frame, now)
            s.messages_to_send()
        s.receive_message('{"flush":true}', now)
        s.messages_to_send()
        while events := list(s.events()):
            for event in events:
                if hasattr(event, "chunk"):
                    for _ in range(5):
                        s.send_audio(event.ref, PCM, now)
                        s.messages_to_send()
                    s.complete_chunk(event.ref, 1.0, now)
                    s.messages_to_send()
    return (time.process_time() - t0) / turns * 1e6


def main() -> None:
    args = parse_args(__doc__)
    rounds, turns = (4, 100) if args.quick else (10, 300)
    best = {kind: min(per_turn_us(kind, turns) for _ in range(rounds))
            for kind in ("bare", "off", "on")}
    figure("metrics: core session, per turn (anchor)", best["bare"], "us")
    for kind, label in (("off", "observer, metrics off"), ("on", "observer, metrics on")):
        extra = best[kind] - best["bare"]
        figure(f"metrics: {label}, per turn", best[kind], "us", "", None,
               f"({extra:+.1f} us, {best[kind] / best['bare']:.2f}x the bare core)")


if __name__ == "__main__":
    main()
