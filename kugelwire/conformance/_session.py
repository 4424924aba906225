"""Sessions to drive: scripts of client steps, their hypothesis strategies, and the driver.

A script is a list of plain steps (JSON-ready lists) so a failing one prints, saves and replays
as it is. Steps:

* ``["send", {...}]`` — send one frame;
* ``["wait", "turn" | "context:<id>" | "request" | "quiet"]`` — read until that piece of work
  has its terminal frame (or the connection is quiet);
* ``["sleep", ms]`` — read for ``ms`` milliseconds (lets a cancel land mid-audio);
* ``["expect", n]`` — at the end, read until ``n`` terminal frames arrived in all.

After the last step the driver reads until everything it started has ended, then closes.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..protocol.ws import MULTI_ENDPOINT, STREAM_ENDPOINT, TTS_ENDPOINT
from ._client import RawConnection, Transcript

__all__ = ["Script", "drive", "strategies"]

Script = list[list[Any]]

ENDPOINTS = (STREAM_ENDPOINT, MULTI_ENDPOINT, TTS_ENDPOINT)

_WORDS = (
    "Hello there. How are you today? The weather is fine, thanks! It is 3.5 degrees "
    "at noon. Dr. Smith said: yes. Call me at <spell>AB-12</spell> later. "
    "Mail <spell>hi@kugel.dev</spell> now.<break time=\"200ms\"/> Goodbye!"
)


def _terminal_count(msgs: list[dict[str, Any]], keys: tuple[str, ...]) -> int:
    return sum(1 for m in msgs if any(m.get(k) for k in keys))


def _until_terminals(keys: tuple[str, ...], n: int) -> Any:
    return lambda m: _terminal_count(m, keys) >= n


def _until_context_closed(cid: str) -> Any:
    return lambda m: any(x.get("context_closed") and x.get("context_id") == cid for x in m)


def drive(
    conn: RawConnection,
    endpoint: str,
    script: Script,
    *,
    timeout: float = 10.0,
    quiet: float = 1.0,
) -> Transcript:
    """Run ``script`` on ``conn`` and return its transcript (the connection is closed).

    A wait ends when its frame arrives, after ``timeout`` seconds, or when the server sent
    nothing for ``quiet`` seconds (a server that never answers does not stall the run)."""
    want = {"turn": 0, "request": 0}
    expect = 0
    for step in script:
        if not conn.is_open:
            break
        kind = step[0]
        if kind == "send":
            conn.send(step[1])
        elif kind == "expect":
            expect = int(step[1])
        elif kind == "sleep":
            conn.settle(step[1] / 1000, step[1] / 1000)
        elif kind == "wait":
            what = step[1]
            if what == "turn":
                want["turn"] += 1
                n = want["turn"]
                conn.receive_until(
                    _until_terminals(("session_closed", "interrupted"), n), timeout, quiet
                )
            elif what == "request":
                want["request"] += 1
                n = want["request"]
                conn.receive_until(
                    _until_terminals(("final", "interrupted", "error"), n), timeout, quiet
                )
            elif what.startswith("context:"):
                cid = what.split(":", 1)[1]
                conn.receive_until(_until_context_closed(cid), timeout, quiet)
            else:
                conn.settle(min(quiet, 0.2), timeout)
    keys = {STREAM_ENDPOINT: ("session_closed", "interrupted"),
            MULTI_ENDPOINT: ("session_closed",),
            TTS_ENDPOINT: ("final", "interrupted", "error")}[endpoint]
    if conn.is_open and expect:
        conn.receive_until(_until_terminals(keys, expect), timeout, quiet)
    if conn.is_open:
        conn.settle(0.1, timeout)
    conn.close()
    return conn.transcript


# -- hypothesis strategies --------------------------------------------------------------------
def strategies(voice_id: Any) -> dict[str, Any]:
    """``{endpoint: strategy of Script}`` (imports hypothesis: the ``conformance`` extra)."""
    from hypothesis import strategies as st

    def split(text: str) -> Any:
        """Random token splits of ``text`` (spell spans and tags may be cut anywhere)."""
        n = len(text)
        def cut(cuts: list[int]) -> list[str]:
            edges = [0, *sorted(cuts), n]
            return [text[a:b] for a, b in itertools.pairwise(edges)]

        return st.lists(st.integers(1, n - 1), max_size=min(12, n - 1), unique=True).map(cut)

    def texts() -> Any:
        words = _WORDS.split(" ")
        return st.tuples(st.integers(0, len(words) - 1), st.integers(1, 12)).map(
            lambda p: " ".join(words[p[0] : p[0] + p[1]]) + " "
        )

    formats = st.sampled_from(
        [{}, {"sample_rate": 16000}, {"sample_rate": 8000}, {"output_format": "ulaw_8000"},
         {"output_format": "alaw_8000"}, {"output_format": "pcm_22050"}]
    )
    voice = {} if voice_id is None else {"voice_id": voice_id}
    # a settings update between turns: valid (settings_updated) or out of range (an error
    # frame, the socket stays open); drawn rarely, so shrinking removes it
    settings_update = st.integers(0, 7).map(
        lambda n: None if n < 6 else {"update_settings": {"speed": 1.1 if n == 6 else 9.0}}
    )

    @st.composite
    def stream(draw: Any) -> Script:
        config = {"language": "en", **voice, **draw(formats),
                  "word_timestamps": draw(st.booleans())}
        script: Script = []
        first = True
        turns = draw(st.integers(1, 4))
        unwaited = False
        for _ in range(turns):
            update = draw(settings_update)
            if update is not None:
                script.append(["send", update])
            tokens = draw(split(draw(texts())))
            end = draw(st.sampled_from(["flush", "flush", "flush-on-text", "close", "cancel",
                                        "flush-cancel"]))
            if end in ("cancel", "flush-cancel") and unwaited:
                # a cancel also drops turns queued behind the one draining: start it only
                # once the earlier turns are over, so each turn's terminal is predictable
                script.append(["wait", "quiet"])
            cancel_at = draw(st.integers(0, len(tokens) - 1)) if end == "cancel" else None
            for i, token in enumerate(tokens):
                frame: dict[str, Any] = {"text": token}
                if first:
                    frame.update(config)
                    first = False
                if end == "flush-on-text" and i == len(tokens) - 1:
                    frame["flush"] = True
                script.append(["send", frame])
                if cancel_at == i:
                    break
            if end in ("flush", "flush-cancel"):
                script.append(["send", {"flush": True}])
            elif end == "close":
                script.append(["send", {"close": True}])
            if end in ("cancel", "flush-cancel"):
                script.append(["sleep", draw(st.integers(0, 40))])
                script.append(["send", {"cancel": True}])
            # a turn that involves a cancel is waited for (its successor is never queued
            # behind it); other turns may be pipelined
            if end in ("cancel", "flush-cancel") or draw(st.booleans()):
                script.append(["wait", "turn"])
                unwaited = False
            else:
                unwaited = True
        if draw(st.booleans()):
            script.append(["send", {"close_socket": True}])
        return [*script, ["expect", turns]]

    @st.composite
    def multi(draw: Any) -> Script:
        config = {"language": "en", **draw(formats), "word_timestamps": draw(st.booleans())}
        n = draw(st.integers(1, 20))
        ops: list[tuple[int, list[Any]]] = []
        for c in range(n):
            cid = f"ctx{c}"
            tokens = draw(split(draw(texts())))
            mine: list[list[Any]] = []
            for token in tokens:
                mine.append(["send", {"text": token, "context_id": cid}])
                if draw(st.integers(0, 5)) == 5:
                    mine.append(["send", {"context_id": cid, "flush": True}])
            if draw(st.integers(0, 6)) == 6:
                mine.append(["send", {"context_id": cid, "cancel": True}])
            end = draw(st.sampled_from(["close", "close", "immediate", "open"]))
            if end == "close":
                mine.append(["send", {"context_id": cid, "close_context": True}])
            elif end == "immediate":
                mine.append(["send", {"context_id": cid, "close_context": True,
                                      "immediate": True}])
            first = mine[0][1]
            first.update({"voice_settings": {"voice_id": voice_id}} if voice_id is not None
                         else {})
            if c == 0:
                first.update(config)
            ops.extend((c, step) for step in mine)
        # interleave the contexts' steps, keeping each context's own order
        order = draw(st.permutations(range(len(ops))))
        queues: dict[int, list[list[Any]]] = {}
        for c, step in ops:
            queues.setdefault(c, []).append(step)
        owners = [ops[i][0] for i in order]
        script: Script = [queues[c].pop(0) for c in owners]
        script.append(["send", {"close_socket": True}])
        return [*script, ["expect", 1]]

    @st.composite
    def tts(draw: Any) -> Script:
        config = {"language": "en", **voice, **draw(formats),
                  "word_timestamps": draw(st.booleans())}
        script: Script = []
        requests = draw(st.integers(1, 4))
        for _ in range(requests):
            update = draw(settings_update)
            if update is not None:
                script.append(["send", update])
            script.append(["send", {"text": draw(texts()).strip() or "Hello.", **config}])
            if draw(st.integers(0, 4)) == 4:
                script.append(["sleep", draw(st.integers(0, 30))])
                script.append(["send", {"cancel": True}])
                script.append(["wait", "request"])
            elif draw(st.booleans()):
                script.append(["wait", "request"])
        return [*script, ["expect", requests]]

    return {STREAM_ENDPOINT: stream(), MULTI_ENDPOINT: multi(), TTS_ENDPOINT: tts()}

