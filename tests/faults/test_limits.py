"""Every server and client limit of ``docs/limits.md``, hit on real sockets over loopback.

The defaults table in ``docs/limits.md`` is checked against the code's signatures too, so the
documented numbers cannot drift from the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from kugelwire.errors import ConnectionClosedError
from kugelwire.protocol._client import MultiClientSession, StreamClientSession
from kugelwire.protocol._events import (
    AudioChunk,
    ContextCreated,
    GenerationStarted,
    ServerError,
    TurnClosed,
)
from kugelwire.protocol._server import ServerLimits, StreamServerSession
from kugelwire.protocol._ws import ClientConnection, ConnectionState, ServerConnection
from kugelwire.server import ServerOptions, serve
from kugelwire.synth import ToneEngine
from kugelwire.transports import _core
from kugelwire.transports.asyncio import connect_stream
from tests.server._client import RawClient

from ._util import client_frame, must, run, server_frames, text_frame, upgrade_request, wait_until

pytestmark = pytest.mark.timeout(20)

KEY = "limits-key"
DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"


# -- the documented defaults ----------------------------------------------------------------------
def _documented_defaults() -> list[tuple[str, str, str]]:
    """``(where, name, default)`` from the ``| Limit | Where | Default |`` table."""
    rows = []
    text = DOC.read_text(encoding="utf-8")
    for line in text.splitlines():
        m = re.match(r"\|[^|]+\|\s*`([\w.]+)\(?(\w*)\)?`\s*\|\s*`([^`]+)`\s*\|", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def _actual_default(where: str, name: str) -> Any:
    if where.startswith("ServerLimits."):
        return {f.name: f.default for f in dataclasses.fields(ServerLimits)}[where.split(".")[1]]
    if where.startswith("ServerOptions."):
        return {f.name: f.default for f in dataclasses.fields(ServerOptions)}[where.split(".")[1]]
    targets: dict[str, Any] = {
        "serve": serve,
        "connect_stream": connect_stream,
        "ClientCore": _core.ClientCore.__init__,
        "ServerConnection": ServerConnection.__init__,
        "ClientConnection": ClientConnection.__init__,
        "StreamClientSession": StreamClientSession.__init__,
    }
    return inspect.signature(targets[where]).parameters[name].default


def test_documented_defaults_match_the_code() -> None:
    rows = _documented_defaults()
    assert len(rows) >= 20, rows
    for where, name, default in rows:
        expected = eval(default, {"__builtins__": {}})  # "2**20", "10_000", "None"...
        assert _actual_default(where, name) == expected, (where, name, default)


# -- server limits --------------------------------------------------------------------------------
def test_max_message_size_closes_1009_and_frees_the_connection() -> None:
    async def main() -> None:
        async with serve(api_key=KEY, max_message_size=4096) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text("a " * 1900 + ".", client.now, flush=True)  # just under: fine
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            session.send_text("b" * 5000, client.now, flush=True)  # over: 1009
            client.flush()
            closed = await client.until_closed()
            assert closed.code == 1009 and closed.by_peer
            await wait_until(lambda: server.connections == 0)
            await client.aclose()

            # through the public client: the turn fails with the close code and its text
            async with await connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
                turn = must(await stream.send_text("c" * 5000, flush=True))
                with pytest.raises(ConnectionClosedError) as info:
                    await turn.collect()
                assert info.value.code == 1009
                assert info.value.unspoken_text == "c" * 5000

    run(main)


def test_max_text_per_turn_refuses_the_message_and_keeps_earlier_text() -> None:
    limits = ServerLimits(max_text_chars=200)

    async def main() -> None:
        async with serve(api_key=KEY, limits=limits) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            first = "word " * 30  # 150 characters
            session.send_text(first, client.now)
            session.send_text("more " * 20, client.now)  # 100 more: over 200
            client.flush()
            await client.pump(lambda: bool(client.of(ServerError)))
            error = client.of(ServerError)[0]
            assert error.raw_code == "VALIDATION_ERROR" and error.status == 400
            assert "more than 200 characters" in error.message
            session.flush(client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            spoken = "".join(e.text for e in client.of(GenerationStarted))
            assert spoken.split() == first.split()  # the accepted text, all of it, nothing else
            assert client.conn.state.value == "open"
            await client.aclose()

    run(main)


def test_queue_behind_a_draining_turn_is_bounded_and_keeps_what_it_accepted() -> None:
    limits = ServerLimits(max_queued_messages=3)
    engine = ToneEngine(piece_ms=20, realtime_factor=0.5)  # the first turn drains for a while

    async def main() -> None:
        async with serve(api_key=KEY, engine=engine, limits=limits) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text("The first turn is speaking now.", client.now, flush=True)
            for part in ("Second ", "turn ", "words ", "refused "):  # queued behind turn 0
                session.send_text(part, client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(ServerError)))
            error = client.of(ServerError)[0]
            assert error.raw_code == "VALIDATION_ERROR" and "queue full" in error.message
            assert not client.of(TurnClosed), "refused while the first turn was draining"
            await client.pump(lambda: bool(client.of(TurnClosed)))
            session.flush(client.now)  # the queue has run: the second turn is open
            client.flush()
            await client.pump(lambda: len(client.of(TurnClosed)) == 2)
            second = [e.text for e in client.of(GenerationStarted) if e.turn == 1]
            assert " ".join(second).split() == ["Second", "turn", "words"]
            await client.aclose()

    run(main)


def test_max_buffer_length_caps_what_a_client_asks_for() -> None:
    limits = ServerLimits(max_buffer_length=40)
    words = " ".join(f"w{i}" for i in range(60))  # no sentence boundary at all

    async def main() -> None:
        async with serve(api_key=KEY, limits=limits) as server:
            session = StreamClientSession(voice_id=1, max_buffer_length=1_000_000)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text(words, client.now)
            client.flush()
            # cut by the buffer bound alone, before any flush
            await client.pump(lambda: len(client.of(GenerationStarted)) >= 3)
            session.flush(client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            texts = [e.text for e in client.of(GenerationStarted)]
            assert all(len(t) <= 40 for t in texts), texts
            assert "".join(texts).split() == words.split()  # cut at whitespace, nothing lost
            await client.aclose()

    run(main)


def test_limits_as_a_dict_apply_and_anything_else_is_refused_at_once() -> None:
    # serve(limits={...}) as JSON or a config file gives it (a dict used to fail at the first
    # turn with an AttributeError deep in the session)
    assert ServerOptions.from_kwargs(limits={"frame_ms": 200}).limits == ServerLimits(
        frame_ms=200)
    with pytest.raises(TypeError, match="unexpected keyword argument 'frame_size'"):
        ServerOptions.from_kwargs(limits={"frame_size": 200})
    with pytest.raises(TypeError, match=r"limits must be a ServerLimits .* not list"):
        ServerOptions.from_kwargs(limits=[("frame_ms", 200)])
    words = " ".join(f"w{i}" for i in range(60))

    async def main() -> None:
        async with serve(api_key=KEY, limits={"max_buffer_length": 40}) as server:
            session = StreamClientSession(voice_id=1, max_buffer_length=1_000_000)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text(words, client.now)
            client.flush()
            await client.pump(lambda: len(client.of(GenerationStarted)) >= 3)
            texts = [e.text for e in client.of(GenerationStarted)]
            assert all(len(t) <= 40 for t in texts), texts
            await client.aclose()

    run(main)


def test_max_contexts_error_and_the_socket_stays() -> None:
    limits = ServerLimits(max_contexts=3)

    async def main() -> None:
        async with serve(api_key=KEY, limits=limits) as server:
            session = MultiClientSession()
            client = await RawClient(session, server.url, api_key=KEY).connect()
            for cid in ("a", "b", "c", "d"):
                session.create_context(cid, client.now, voice_id=1)
                session.send_text(cid, "Hello", client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(ServerError)))
            error = client.of(ServerError)[0]
            assert (error.raw_code, error.status) == ("TOO_MANY_CONTEXTS", 429)
            assert error.context_id == "d"
            assert sorted(e.context_id for e in client.of(ContextCreated)) == ["a", "b", "c"]
            assert client.conn.state.value == "open"
            # the three others still work on the same socket
            session.send_text("a", " world.", client.now, flush=True)
            client.flush()
            await client.pump(lambda: any(e.context_id == "a" for e in client.of(AudioChunk)))
            await client.aclose()

    run(main)


def test_handshake_timeout_closes_a_slowloris() -> None:
    request = upgrade_request("/ws/tts/stream", key=KEY)

    async def main() -> None:
        async with serve(api_key=KEY, handshake_timeout=1.0) as server:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            t0 = time.monotonic()
            sent = 0
            closed_at = None
            try:
                for byte in request:  # one byte every 0.2 s: the request would take ~30 s
                    await loop.sock_sendall(sock, bytes([byte]))
                    sent += 1
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    assert data == b"", data  # no response at all, just the close
                    closed_at = time.monotonic() - t0
                    break
            except (ConnectionResetError, BrokenPipeError):
                closed_at = time.monotonic() - t0
            finally:
                sock.close()
            assert closed_at is not None and 0.9 <= closed_at <= 2.5, closed_at
            assert sent < len(request) // 2
            await wait_until(lambda: server.connections == 0)

    run(main)


def test_max_connections_503_then_the_slot_is_freed() -> None:
    async def main() -> None:
        async with serve(api_key=KEY, max_connections=2) as server:
            a = await RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY).connect()
            b = await RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY).connect()
            c = await RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY).connect()
            assert a.connected and b.connected
            assert c.rejected is not None and c.rejected.status_code == 503
            assert c.rejected.retry_after == 1.0
            await a.aclose()
            await wait_until(lambda: server.connections == 1)
            d = await RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY).connect()
            assert d.connected
            for x in (b, c, d):
                await x.aclose()

    run(main)


def test_ping_timeout_closes_a_peer_that_stops_answering() -> None:
    """A WebSocket peer that completed the handshake, then went silent (answers nothing)."""

    async def main() -> None:
        async with serve(api_key=KEY, ping_interval=0.3, ping_timeout=0.3) as server:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(upgrade_request("/ws/tts/stream", key=KEY))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            t0 = loop.time()
            data = b""
            while True:  # read, but never answer the ping
                chunk = await asyncio.wait_for(reader.read(1024), 3)
                if not chunk:
                    break
                data += chunk
            elapsed = loop.time() - t0
            frames, rest = server_frames(data)
            assert [op for op, _ in frames] == [0x9, 0x8] and rest == b""  # ping, then close
            assert frames[1][1] == b"\x03\xf3keepalive ping timeout"  # 1011
            assert 0.5 <= elapsed <= 3.0, elapsed
            await wait_until(lambda: server.connections == 0)
            writer.close()

    run(main)


def test_server_keepalive_sans_io() -> None:
    """The core's server keepalive, with a fake clock: ping after silence, pong resets it,
    input postpones it, a missing pong fails the connection with 1011."""
    conn = ServerConnection(lambda path: StreamServerSession(), now=0.0,
                            keepalive_interval=10.0, ping_timeout=5.0)
    conn.receive_data(upgrade_request("/ws/tts/stream"), 0.0)
    conn.data_to_send()
    assert conn.next_deadline() == 10.0
    conn.receive_data(text_frame({"text": ""}), 4.0)  # input: the peer is alive
    assert conn.next_deadline() == 14.0
    conn.handle_timeout(14.0)
    (ping,), _ = server_frames(conn.data_to_send())
    assert ping[0] == 0x9
    assert conn.next_deadline() == 19.0
    conn.receive_data(text_frame({"text": ""}), 15.0)  # input is not a pong
    assert conn.next_deadline() == 19.0
    conn.receive_data(client_frame(ping[1], opcode=0xA), 16.0)  # the pong
    assert conn.next_deadline() == 26.0
    conn.handle_timeout(26.0)
    conn.data_to_send()
    conn.handle_timeout(31.0)
    (close,), _ = server_frames(conn.data_to_send())
    assert close == (0x8, b"\x03\xf3keepalive ping timeout")
    assert conn.state is ConnectionState.CLOSED
    # off by default in the core (the runners turn it on)
    quiet = ServerConnection(lambda path: StreamServerSession(), now=0.0)
    quiet.receive_data(upgrade_request("/ws/tts/stream"), 0.0)
    assert quiet.next_deadline() is None


def test_answered_pings_keep_an_idle_connection_open() -> None:
    async def main() -> None:
        async with serve(api_key=KEY, ping_interval=0.2, ping_timeout=0.2) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            deadline = client.now + 1.5  # several ping rounds; RawClient answers them

            async def idle() -> None:
                await client.pump(lambda: client.now > deadline, timeout=3)

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(idle(), 1.5)
            assert client.closed is None
            assert server.connections == 1
            session.send_text("Still here.", client.now, flush=True)
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            await client.aclose()

    run(main)


# -- client limits --------------------------------------------------------------------------------
def test_client_max_message_size() -> None:
    async def main() -> None:
        async with serve(api_key=KEY) as server, await connect_stream(
            server.url, api_key=KEY, voice_id=1, max_message_size=1000
        ) as stream:
            text = "A sentence whose audio frames are big."
            turn = must(await stream.send_text(text, flush=True))
            with pytest.raises(ConnectionClosedError) as info:
                await turn.collect()
            assert info.value.code == 1009
            assert info.value.unspoken_text == text

    run(main)


def test_client_bounded_event_queue_pauses_reading() -> None:
    engine = ToneEngine(piece_ms=10)
    text = " ".join(f"Sentence {i} is short." for i in range(30))

    async def main() -> None:
        async with serve(
            api_key=KEY, engine=engine, write_buffer_limit=64 * 1024
        ) as server, await connect_stream(
            server.url, api_key=KEY, voice_id=1, max_buffered_events=50
        ) as stream:
            turn = must(await stream.send_text(text, flush=True))
            # The application does not consume. Once the socket buffers between the two are
            # full (how long that takes depends on the kernel), synthesis stops and stays
            # stopped: the server waits for the client to read.
            await asyncio.sleep(1.0)
            core = stream._core
            assert core.reading_paused
            assert core.buffered_events <= 50 + 200, core.buffered_events  # one read over
            yielded = lambda: sum(r.samples_yielded for r in engine.runs)  # noqa: E731
            paused_at, deadline = yielded(), time.monotonic() + 10.0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if yielded() == paused_at:
                    break
                paused_at = yielded()
            await asyncio.sleep(0.5)
            assert yielded() == paused_at  # server waits
            events = await turn.collect()
            assert isinstance(events[-1], TurnClosed)
            assert sum(e.samples for e in events if isinstance(e, AudioChunk)) == sum(
                r.samples_yielded for r in engine.runs
            )

    run(main)
