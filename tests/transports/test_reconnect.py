"""Reconnect after a drop (``reconnect=True``), on every adapter.

A turn / context with no audio yet is replayed on the new connection; one that had audio fails
with the exact text left unspoken; each attempt is a :class:`Reconnecting` event in the log; the
new socket is opened right away (ready before the next turn). Drops at every step of a turn:
before the first audio, mid-audio, between ``final`` and ``session_closed``, and mid-flush on one
of three multi contexts; TCP resets, close 1011 and a 4xxx close that is not about credentials;
backoff while the server is down; a real server process killed and restarted mid-turn.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kugelwire.errors import ConnectionClosedError, ServerRestarting
from kugelwire.protocol import Reconnecting
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    GenerationStarted,
    TurnClosed,
    TurnFinal,
)

from .conftest import Harness, RestartServer

pytestmark = pytest.mark.timeout(60)

FAST = {"reconnect": True, "reconnect_delay": 0.02, "max_reconnect_delay": 0.2}


def audio(events: list[Any]) -> list[AudioChunk]:
    return [e for e in events if isinstance(e, AudioChunk)]


def reconnects(stream: Any) -> list[Reconnecting]:
    return [e for e in stream.log if isinstance(e, Reconnecting)]


async def wait_open(h: Harness, stream: Any, timeout: float = 3.0) -> None:
    """Pre-connect: the new socket is up without any new turn being sent."""
    deadline = time.monotonic() + timeout
    while stream._core.state != "open":
        assert time.monotonic() < deadline, f"not reconnected ({stream._core.state})"
        await h.sleep(0.01)


@pytest.mark.parametrize("how", ["reset", "close1011", "close4000"])
def test_drop_before_audio_replays_the_turn(h: Harness, how: str) -> None:
    with RestartServer([f"{how}_before_audio"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, **FAST) as stream:
                turn = await stream.send_text("Replay me please.", flush=True)
                events = await turn.collect()
                assert isinstance(events[-1], TurnClosed) and audio(events)
                assert stream.restarts == 1
                [event] = reconnects(stream)
                assert event.attempt == 1 and event.replayed == ("0",)
                assert event.code == (None if how == "reset" else int(how[5:]))
                nxt = await stream.send_text("After the drop.", flush=True)
                assert isinstance((await nxt.collect())[-1], TurnClosed)

        h.run(scenario)
        assert srv.connections == 2
        assert srv.texts[1][0] == "Replay me please."


@pytest.mark.parametrize("how", ["reset", "close1011"])
def test_drop_mid_audio_reports_the_unspoken_text(h: Harness, how: str) -> None:
    with RestartServer([f"{how}_after_first_chunk"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, **FAST) as stream:
                turn = await stream.send_text("First sentence. Second sentence.", flush=True)
                got: list[Any] = []
                with pytest.raises(ConnectionClosedError) as info:
                    async for event in turn:
                        got.append(event)
                assert not isinstance(info.value, ServerRestarting)
                assert audio(got)
                assert info.value.unspoken_text == "Second sentence."
                await wait_open(h, stream)  # reconnected before the next turn
                nxt = await stream.send_text("Still usable.", flush=True)
                assert isinstance((await nxt.collect())[-1], TurnClosed)
                assert len(reconnects(stream)) == 1

        h.run(scenario)
        assert srv.connections == 2
        assert srv.texts[1] == ["Still usable."]  # nothing that had audio was replayed


def test_drop_between_final_and_session_closed(h: Harness) -> None:
    with RestartServer(["reset_after_final"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, **FAST) as stream:
                turn = await stream.send_text("All of it was spoken.", flush=True)
                got: list[Any] = []
                with pytest.raises(ConnectionClosedError) as info:
                    async for event in turn:
                        got.append(event)
                assert audio(got) and isinstance(got[-1], TurnFinal)
                assert info.value.unspoken_text == ""
                await wait_open(h, stream)
                nxt = await stream.send_text("Next one.", flush=True)
                assert isinstance((await nxt.collect())[-1], TurnClosed)

        h.run(scenario)
        assert srv.connections == 2


def test_multi_drop_mid_flush_on_one_of_three_contexts(h: Harness) -> None:
    with RestartServer(["reset_mid_context_b"]) as srv:

        async def scenario() -> None:
            async with await h.connect_multi(srv.url, voice_id=1, **FAST) as multi:
                a = await multi.create_context("a")
                b = await multi.create_context("b")
                c = await multi.create_context("c")
                await a.send_text("Alpha one.", flush=True)
                await b.send_text("Bravo one. Bravo two.", flush=True)
                await c.send_text("Charlie one.", flush=True)
                for ctx in (a, c):
                    events = [e async for e in ctx.until_final()]
                    assert isinstance(events[-1], TurnFinal) and audio(events), ctx.context_id
                got: list[Any] = []
                with pytest.raises(ConnectionClosedError) as info:
                    async for event in b:
                        got.append(event)
                assert audio(got)
                assert info.value.unspoken_text == "Bravo two."
                assert info.value.context_id == "b"
                await a.send_text("Alpha again.", flush=True)  # a survived the reconnect
                events = [e async for e in a.until_final()]
                assert isinstance(events[-1], TurnFinal) and audio(events)
                await a.close()
                await c.close()

        h.run(scenario)
        assert srv.connections == 2


def test_backoff_while_the_server_is_down(h: Harness) -> None:
    with RestartServer(["reset_before_audio", "refuse", "refuse", "normal"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(
                srv.url, voice_id=1, reconnect=True, reconnect_delay=0.05,
                max_reconnect_delay=0.5,
            ) as stream:
                turn = await stream.send_text("Wait for me.", flush=True)
                events = await turn.collect()
                assert isinstance(events[-1], TurnClosed) and audio(events)
                attempts = reconnects(stream)
                assert [e.attempt for e in attempts] == [1, 2, 3]
                for e in attempts:  # bounded exponential backoff, jittered (half to full)
                    step = min(0.5, 0.05 * 2 ** (e.attempt - 1))
                    assert step / 2 <= e.delay <= step

        h.run(scenario)
        assert srv.connections == 4


def test_max_reconnects_gives_up(h: Harness) -> None:
    with RestartServer(["reset_before_audio", "refuse", "refuse", "refuse"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, max_reconnects=2,
                                              **FAST) as stream:
                turn = await stream.send_text("Nobody will say this.", flush=True)
                with pytest.raises(ConnectionClosedError) as info:
                    await turn.collect()
                assert info.value.unspoken_text == "Nobody will say this."
                assert stream.closed

        h.run(scenario)
        assert srv.connections == 3


def test_without_reconnect_a_drop_raises(h: Harness) -> None:
    with RestartServer(["reset_before_audio"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1) as stream:
                turn = await stream.send_text("Dropped.", flush=True)
                with pytest.raises(ConnectionClosedError) as info:
                    await turn.collect()
                assert info.value.unspoken_text == "Dropped."
                assert stream.closed and not reconnects(stream)

        h.run(scenario)
        assert srv.connections == 1


# -- a real server process, killed and restarted mid-turn ------------------------------------
_SERVER = """
import asyncio, sys
from kugelwire.server import serve
from kugelwire.synth import ToneEngine

async def main():
    engine = ToneEngine(piece_ms=20, realtime_factor=0.5)
    async with serve("127.0.0.1", int(sys.argv[1]), engine=engine) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@contextmanager
def server_process(port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(port), "the server did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("adapter", ["asyncio", "trio", "sync"])
def test_server_killed_and_restarted_mid_turn(adapter: str) -> None:
    h = Harness(adapter)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = server_process(port)
    proc = first.__enter__()
    text = "First sentence here. Second sentence here. Third sentence here."
    try:

        async def scenario() -> None:
            async with await h.connect_stream(
                f"ws://127.0.0.1:{port}", voice_id=1, reconnect=True, reconnect_delay=0.05,
                max_reconnect_delay=0.5, max_reconnects=30,
            ) as stream:
                turn = await stream.send_text(text, flush=True)
                got: list[Any] = []
                with pytest.raises(ConnectionClosedError) as info:
                    async for event in turn:
                        got.append(event)
                        if isinstance(event, AudioChunk) and proc.poll() is None:
                            proc.kill()  # mid-turn, after the first audio
                            proc.wait(5)
                            second.__enter__()
                started = {e.chunk_id: e.text for e in got if isinstance(e, GenerationStarted)}
                done = [started[e.chunk_id] for e in got if isinstance(e, ChunkComplete)]
                spoken = " ".join(done)
                assert text.startswith(spoken)
                assert info.value.unspoken_text == text[len(spoken):].strip()
                nxt = await stream.send_text("After the restart.", flush=True)
                events = await nxt.collect()
                assert isinstance(events[-1], TurnClosed) and audio(events)
                assert reconnects(stream)

        second = server_process(port)
        try:
            h.run(scenario, timeout=40)
        finally:
            second.__exit__(None, None, None)
    finally:
        first.__exit__(None, None, None)
