"""Faults on the real transports over loopback: killed peers, half-open sockets, restarts in the
middle of a turn, a failing engine and a consumer that stops reading.

Each test states the fault, then asserts what each side must end up with: a typed error carrying
the unspoken text on the client, a cancelled engine and a freed connection on the server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kugelwire.errors import (
    ConnectionClosedError,
    ConnectionFailed,
    ServerErrorResponse,
    ServerRestarting,
)
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ServerError,
    TurnClosed,
    TurnFinal,
)
from kugelwire.protocol._server import StreamServerSession
from kugelwire.protocol._ws import ServerConnection
from kugelwire.server import ServerHandle, run_in_thread, serve
from kugelwire.synth import ToneEngine
from kugelwire.synth._base import CancelToken
from tests.server._servers import KINDS, served

from ._util import (
    must,
    run,
    server_process,
    text_frame,
    upgrade_request,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

KEY = "faults-key"
LONG_WORDS = " ".join(["word"] * 200) + "."


def _idle(server: ServerHandle) -> bool:
    return server.stats() == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}


# -- peers that die -------------------------------------------------------------------------------
def test_server_killed_mid_turn_client_gets_typed_error_with_unspoken_text() -> None:
    from kugelwire.transports.asyncio import connect_stream

    text = "First sentence here. Second sentence is this one. Third one."
    with server_process(KEY, realtime_factor=1.0) as (port, pid):

        async def main() -> None:
            async with await connect_stream(f"ws://127.0.0.1:{port}", api_key=KEY,
                                            voice_id=1, restart_delay=0.05) as stream:
                turn = must(await stream.send_text(text, flush=True))
                got: list[Any] = []
                with pytest.raises(ConnectionClosedError) as info:
                    async for event in turn:
                        got.append(event)
                        if isinstance(event, ChunkComplete):
                            os.kill(pid, signal.SIGKILL)  # the first sentence was spoken
                error = info.value
                assert not isinstance(error, ServerRestarting)  # no close code: no replay
                assert error.code is None
                assert error.turn == 0
                assert error.unspoken_text == "Second sentence is this one. Third one."
                assert any(isinstance(e, AudioChunk) for e in got)
                with pytest.raises(ConnectionClosedError):
                    await stream.send_text("The stream is dead.", flush=True)

        run(main, timeout=20)


_CLIENT_SCRIPT = """
import asyncio, sys
from kugelwire.transports.asyncio import connect_stream
from kugelwire.protocol._events import AudioChunk

async def main():
    stream = await connect_stream(sys.argv[1], api_key=sys.argv[2], voice_id=1)
    turn = await stream.send_text(sys.argv[3], flush=True)
    async for event in turn:
        if isinstance(event, AudioChunk):
            print("audio", flush=True)
            break
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_client_killed_mid_turn_server_cancels_engine_and_frees_connection() -> None:
    engine = ToneEngine(piece_ms=20, realtime_factor=1.0)

    async def main() -> None:
        async with serve(api_key=KEY, engine=engine) as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CLIENT_SCRIPT, server.url, KEY, LONG_WORDS,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 10)
                assert line == b"audio\n"
                stats = server.stats()
                assert stats["connections"] == stats["sessions"] == stats["jobs"] == 1, stats
                proc.kill()  # SIGKILL: no close frame, the kernel closes the socket
                await proc.wait()
                await wait_until(lambda: _idle(server), timeout=5)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            run_ = engine.runs[0]
            assert not run_.finished and (run_.cancelled or run_.closed_early)
            assert run_.pieces_yielded < run_.pieces_planned // 2

    run(main, timeout=20)


# -- half-open sockets ----------------------------------------------------------------------------
def _open_half_open(port: int, text: str | None) -> socket.socket:
    """A client that upgrades, optionally starts a turn, then vanishes without a FIN: it never
    reads again and never answers a ping (the socket stays open on our side)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(upgrade_request("/ws/tts/stream", key=KEY))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    if text is not None:
        sock.sendall(text_frame({"text": text, "voice_id": 1, "flush": True}))
    return sock


@pytest.mark.parametrize("mid_turn", [False, True], ids=["idle", "mid-turn"])
def test_half_open_socket_is_reaped_by_the_ping_timeout(mid_turn: bool) -> None:
    engine = ToneEngine()
    text = " ".join(f"Sentence number {i} is here." for i in range(200)) if mid_turn else None
    with run_in_thread(api_key=KEY, engine=engine, ping_interval=0.3, ping_timeout=0.3,
                       close_timeout=0.3, write_buffer_limit=64 * 1024) as handle:
        sock = _open_half_open(handle.port, text)
        try:
            t0 = time.monotonic()
            time.sleep(0.2)
            assert handle.connections == 1
            while handle.connections and time.monotonic() - t0 < 8:
                time.sleep(0.02)
            elapsed = time.monotonic() - t0
            assert handle.connections == 0, "the half-open socket was not reaped"
            assert elapsed < 4.0, elapsed  # ping 0.3 + pong 0.3 + close 0.3, plus slack
            if mid_turn:
                assert engine.runs and not engine.runs[-1].finished  # paused, then cancelled
        finally:
            sock.close()


def test_half_open_socket_is_reaped_under_trio() -> None:
    trio = pytest.importorskip("trio")
    from kugelwire.server import trio_serve

    text = " ".join(f"Sentence number {i} is here." for i in range(200))

    async def main() -> None:
        async with trio_serve(api_key=KEY, engine=ToneEngine(), ping_interval=0.3,
                              ping_timeout=0.3, close_timeout=0.3,
                              write_buffer_limit=64 * 1024) as server:
            sock = await trio.to_thread.run_sync(_open_half_open, server.port, text)
            try:
                with trio.fail_after(5):
                    while server.connections:
                        await trio.sleep(0.02)
            finally:
                sock.close()

    trio.run(main)


# -- a server that stops answering ----------------------------------------------------------------
async def _mute_server(upgrade: bool) -> tuple[asyncio.AbstractServer, int]:
    """A TCP server that (optionally) completes the upgrade, then never sends another byte:
    no audio, no pong, no close. It keeps reading so the client's writes never block."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if upgrade:
            conn = ServerConnection(lambda path: StreamServerSession(), now=0.0)
            head = await reader.readuntil(b"\r\n\r\n")
            conn.receive_data(head, 0.0)
            writer.write(conn.data_to_send())
        while await reader.read(65536):
            pass  # swallow everything, answer nothing
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_client_connect_timeout_on_a_server_that_never_upgrades() -> None:
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        server, port = await _mute_server(upgrade=False)
        async with server:
            t0 = time.monotonic()
            with pytest.raises(ConnectionFailed):
                await connect_stream(f"ws://127.0.0.1:{port}", connect_timeout=0.5)
            assert time.monotonic() - t0 < 2.0

    run(main)


def test_client_ping_timeout_on_a_server_that_went_silent_mid_turn() -> None:
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        server, port = await _mute_server(upgrade=True)
        async with server, await connect_stream(
            f"ws://127.0.0.1:{port}", voice_id=1, ping_interval=0.2, ping_timeout=0.3
        ) as stream:
            t0 = time.monotonic()
            turn = must(await stream.send_text("Nobody will speak this.", flush=True))
            with pytest.raises(ConnectionClosedError) as info:
                await turn.collect()
            assert info.value.code == 1011
            assert info.value.unspoken_text == "Nobody will speak this."
            assert time.monotonic() - t0 < 3.0

    run(main)


# -- 1012 in the middle of a turn -----------------------------------------------------------------
class GatedEngine:
    """Tone audio, except that the calls numbered in ``hold`` produce nothing and wait for
    their cancel token (a chunk that is still being generated when the restart comes)."""

    max_concurrency = 4

    def __init__(self, hold: set[int]) -> None:
        self.hold = hold
        self.texts: list[str] = []
        self.held = threading.Event()
        self._tone = ToneEngine(piece_ms=20)
        self._lock = threading.Lock()

    def synthesize(self, chunk: Any, params: Any, cancel: CancelToken) -> Iterator[Any]:
        with self._lock:
            number = len(self.texts)
            self.texts.append(chunk.text)
        if number in self.hold:
            self.held.set()
            while not cancel.wait(0.01):
                pass
            return
        yield from self._tone.synthesize(chunk, params, cancel)


def _restart(server: ServerHandle) -> None:
    """The server closes every WebSocket with 1012 right now, in the middle of the turn."""
    for peer in list(server.core.connections):
        assert peer.conn is not None
        peer.conn.close(1012, "restarting")
        peer._pump(0.0)
        peer.owner.flush()


def test_1012_before_any_audio_replays_the_turn() -> None:
    from kugelwire.transports.asyncio import connect_stream

    engine = GatedEngine(hold={0})
    text = "Replay this whole turn please."

    async def main() -> None:
        async with serve(api_key=KEY, engine=engine) as server, await connect_stream(
            server.url, api_key=KEY, voice_id=1, restart_delay=0.05
        ) as stream:
            turn = must(await stream.send_text(text, flush=True))
            await wait_until(engine.held.is_set)
            _restart(server)
            events = await turn.collect()
            assert isinstance(events[-1], TurnClosed)
            assert any(isinstance(e, AudioChunk) for e in events)
            assert stream.restarts == 1
            assert engine.texts == [text, text]  # spoken once, on the new connection
            nxt = must(await stream.send_text("After the restart.", flush=True))
            assert isinstance((await nxt.collect())[-1], TurnClosed)
            await wait_until(lambda: server.connections == 1)

    run(main)


def test_1012_after_audio_reports_the_unspoken_text() -> None:
    from kugelwire.transports.asyncio import connect_stream

    engine = GatedEngine(hold={1})

    async def main() -> None:
        async with serve(api_key=KEY, engine=engine) as server, await connect_stream(
            server.url, api_key=KEY, voice_id=1, restart_delay=0.05
        ) as stream:
            turn = must(await stream.send_text("First sentence. Second sentence.", flush=True))
            got: list[Any] = []
            with pytest.raises(ServerRestarting) as info:
                async for event in turn:
                    got.append(event)
                    if isinstance(event, ChunkComplete):
                        await wait_until(engine.held.is_set)
                        _restart(server)
            assert any(isinstance(e, AudioChunk) for e in got)
            assert info.value.code == 1012
            assert info.value.unspoken_text == "Second sentence."
            nxt = must(await stream.send_text("Still usable.", flush=True))  # reconnected
            assert isinstance((await nxt.collect())[-1], TurnClosed)

    run(main)


# -- the engine fails -----------------------------------------------------------------------------
class FailingOnce:
    """The first call yields some audio, then raises; later calls work."""

    max_concurrency = 1

    def __init__(self) -> None:
        self.calls = 0

    def synthesize(self, chunk: Any, params: Any, cancel: CancelToken) -> Iterator[Any]:
        self.calls += 1
        yield b"\x01\x00" * 240
        if self.calls == 1:
            raise RuntimeError("the engine broke mid-chunk")
        yield b"\x02\x00" * 240


def test_engine_raising_mid_chunk_is_internal_error_and_the_socket_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kugelwire.transports.asyncio import connect_stream

    engine = FailingOnce()

    async def main() -> None:
        async with serve(api_key=KEY, engine=engine) as server, await connect_stream(
            server.url, api_key=KEY, voice_id=1
        ) as stream:
            turn = must(await stream.send_text("It fails here. The next chunk works.", flush=True))
            events = await turn.collect()
            errors = [e for e in events if isinstance(e, ServerError)]
            assert len(errors) == 1
            assert (errors[0].raw_code, errors[0].status) == ("INTERNAL_ERROR", 500)
            assert errors[0].message == "Audio generation failed"  # no internals leak
            assert isinstance(events[-1], TurnClosed)  # the turn carries on and ends
            assert any(isinstance(e, TurnFinal) for e in events)
            nxt = must(await stream.send_text("A new turn.", flush=True))
            later = await nxt.collect()
            assert isinstance(later[-1], TurnClosed)
            assert not any(isinstance(e, ServerError) for e in later)
            assert server.connections == 1 and server.stats()["jobs"] == 0

    run(main)
    assert any("engine failed" in r.getMessage() for r in caplog.records)  # logged once
    assert not any(isinstance(r.exc_info and r.exc_info[1], ServerErrorResponse)
                   for r in caplog.records)


# -- a consumer that stops reading ----------------------------------------------------------------
@pytest.mark.parametrize("backend", KINDS)
def test_slow_consumer_pauses_the_server_and_loses_nothing(backend: str) -> None:
    from kugelwire.transports.asyncio import connect_stream

    engine = ToneEngine()
    limit = 128 * 1024
    text = " ".join(f"Backpressure sentence number {i} is here." for i in range(60))

    async def main() -> None:
        async with served(backend, api_key=KEY, engine=engine, write_buffer_limit=limit) as server:
            async with await connect_stream(server.url, api_key=KEY, voice_id=1,
                                            max_buffered_bytes=64 * 1024) as stream:
                turn = must(await stream.send_text(text, flush=True))
                events: list[Any] = []
                async for event in turn:
                    events.append(event)
                    if isinstance(event, AudioChunk):
                        break
                await asyncio.sleep(1.0)  # the application stalls
                produced = sum(r.samples_yielded for r in engine.runs)
                await asyncio.sleep(0.5)
                assert sum(r.samples_yielded for r in engine.runs) == produced, "not paused"
                assert stream._core.reading_paused
                assert server.peak_buffered <= limit + 64 * 1024, server.peak_buffered
                events += await turn.collect()
            assert isinstance(events[-1], TurnClosed)
            chunks = [e for e in events if isinstance(e, AudioChunk)]
            assert [c.idx for c in chunks] == list(range(len(chunks)))
            total = sum(c.samples for c in chunks)
            assert total == sum(r.samples_yielded for r in engine.runs)
            assert total * 2 > 8 * limit  # far more audio than any buffer on the way
            await wait_until(lambda: _idle(server))

    run(main, timeout=25)
