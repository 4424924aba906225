"""One scenario suite, run on the asyncio, trio and blocking adapters against loopback servers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from kugelwire.errors import (
    AuthenticationError,
    ConnectionFailed,
    LocalProtocolError,
    ServerRestarting,
)
from kugelwire.protocol._events import (
    AudioChunk,
    ChunkComplete,
    ContextClosed,
    Interrupted,
    RequestFinal,
    TurnClosed,
    TurnFinal,
    TurnStarted,
)
from kugelwire.transports import sync as kw_sync

from .conftest import AUTH_KEY, Harness, RestartServer

pytestmark = pytest.mark.timeout(30)

LONG = " ".join(f"This is sentence number {i}." for i in range(12))


def audio(events: list[Any]) -> list[AudioChunk]:
    return [e for e in events if isinstance(e, AudioChunk)]


def same(a: Any, b: Any) -> bool:
    """Identity, looking through the sync harness's shim."""
    return getattr(a, "_obj", a) is getattr(b, "_obj", b)


def check_turn(events: list[Any], number: int) -> None:
    assert isinstance(events[0], TurnStarted)
    assert isinstance(events[-1], TurnClosed)
    assert audio(events), "a turn without audio"
    assert {e.turn for e in events if hasattr(e, "turn")} == {number}
    idx = [a.idx for a in audio(events)]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)


def test_several_turns(h: Harness, server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_stream(server.url, voice_id=1) as stream:
            first = await stream.send_text("Hello ")
            again = await stream.send_text("world.")
            assert same(first, again)
            assert same(await stream.flush(), first)
            second = await stream.send_text("Second turn.", flush=True)  # pipelined
            check_turn(await first.collect(), 0)
            check_turn(await second.collect(), 1)
            third = await stream.send_text("Third turn!", flush=True)
            check_turn(await third.collect(), 2)
            with pytest.raises(LocalProtocolError):
                await stream.flush()  # third was flushed already

    h.run(scenario)


def test_barge_in(h: Harness, slow_server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_stream(slow_server.url, voice_id=1) as stream:
            turn = await stream.send_text(LONG, flush=True)
            async for event in turn:
                if isinstance(event, AudioChunk):
                    break
            await stream.cancel()
            rest = await turn.collect()
            assert not audio(rest), "audio of a cancelled turn after cancel() returned"
            assert isinstance(rest[-1], Interrupted)
            nxt = await stream.send_text("Next one.", flush=True)
            check_turn(await nxt.collect(), 1)

    h.run(scenario)


def test_multi_three_contexts(h: Harness, server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_multi(server.url) as multi:
            ctxs = [await multi.create_context(c, voice_id=1) for c in ("a", "b", "c")]
            for ctx in ctxs:
                await ctx.send_text(f"Context {ctx.context_id} speaks.", flush=True)
            a, b, c = ctxs
            await c.close(immediate=True)
            for ctx in (a, b):
                events = [e async for e in ctx.until_final()]
                assert isinstance(events[-1], TurnFinal) and audio(events)
                assert {e.context_id for e in events} == {ctx.context_id}
                await ctx.close()
                rest = await ctx.collect()
                assert isinstance(rest[-1], ContextClosed)
            rest_c = await c.collect()
            assert not audio(rest_c) and isinstance(rest_c[-1], ContextClosed)

    h.run(scenario)


def test_tts_one_shot(h: Harness, server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_tts(server.url, voice_id=1) as tts:
            first = tts.synthesize("Hello there.")
            second = tts.synthesize("General Kenobi.", speed=1.1)
            events1 = [e async for e in first]
            events2 = [e async for e in second]
            for events, n in ((events1, 0), (events2, 1)):
                assert isinstance(events[-1], RequestFinal) and audio(events)
                assert {e.turn for e in events if hasattr(e, "turn")} == {n}
            again = [e async for e in tts.synthesize("Once more.")]
            assert isinstance(again[-1], RequestFinal)

    h.run(scenario)


def test_update_settings(h: Harness, server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_stream(server.url, voice_id=1) as stream:
            await stream.update_settings(speed=1.1)
            turn = await stream.send_text("Faster now.", flush=True)
            check_turn(await turn.collect(), 0)
            assert stream.settings is not None and stream.settings["speed"] == 1.1
            with pytest.raises(LocalProtocolError):
                await stream.update_settings(speed=5.0)

    h.run(scenario)


def test_auth_failure(h: Harness, auth_server: Any) -> None:
    async def scenario() -> None:
        with pytest.raises(AuthenticationError) as info:
            await h.connect_stream(auth_server.url, api_key="wrong")
        assert info.value.status_code == 401

    h.run(scenario)


@pytest.mark.parametrize("auth", ["query", "bearer"])
def test_api_key_with_reserved_characters(h: Harness, auth_server: Any, auth: str) -> None:
    async def scenario() -> None:
        async with await h.connect_stream(auth_server.url, api_key=AUTH_KEY, auth=auth,
                                          voice_id=1) as stream:
            turn = await stream.send_text("Authorised.", flush=True)
            check_turn(await turn.collect(), 0)

    h.run(scenario)


def test_connection_refused(h: Harness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        with pytest.raises(ConnectionFailed) as info:
            await h.connect_stream(f"ws://127.0.0.1:{port}", connect_timeout=2.0)
        assert isinstance(info.value.__cause__, OSError)

    h.run(scenario)


def test_restart_before_audio_replays(h: Harness) -> None:
    with RestartServer(["restart_before_audio"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, restart_delay=0.05) as stream:
                turn = await stream.send_text("Replay me please.", flush=True)
                events = await turn.collect()
                assert isinstance(events[-1], TurnClosed) and audio(events)
                assert stream.restarts == 1
                nxt = await stream.send_text("After the restart.", flush=True)
                assert isinstance((await nxt.collect())[-1], TurnClosed)

        h.run(scenario)
        assert srv.connections == 2
        assert srv.texts[1][0] == "Replay me please."


def test_restart_after_audio_raises(h: Harness) -> None:
    with RestartServer(["restart_after_first_chunk"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, restart_delay=0.05) as stream:
                turn = await stream.send_text("First sentence. Second sentence.", flush=True)
                got = []
                with pytest.raises(ServerRestarting) as info:
                    async for event in turn:
                        got.append(event)
                assert audio(got)
                assert info.value.unspoken_text == "Second sentence."
                assert info.value.code == 1012
                nxt = await stream.send_text("Still usable.", flush=True)  # reconnected
                assert isinstance((await nxt.collect())[-1], TurnClosed)

        h.run(scenario)
        assert srv.connections == 2


def test_backpressure(h: Harness, server: Any) -> None:
    bound = 64 * 1024

    async def scenario() -> None:
        text = " ".join(f"Backpressure sentence number {i} is here." for i in range(40))
        async with await h.connect_stream(server.url, voice_id=1,
                                          max_buffered_bytes=bound) as stream:
            turn = await stream.send_text(text, flush=True)
            events = []
            async for event in turn:
                events.append(event)
                if isinstance(event, AudioChunk):
                    break
            peak = 0
            for _ in range(20):  # the consumer stops reading for 2 s
                await h.sleep(0.1)
                peak = max(peak, stream._core.buffered_bytes)
            assert stream._core.reading_paused
            assert peak <= bound + 64 * 1024, peak  # one socket read of overshoot at most
            events += await turn.collect()
            assert isinstance(events[-1], TurnClosed)
            chunks = audio(events)
            samples = sum(a.samples for a in chunks)
            expected = sum(e.audio_seconds for e in events if isinstance(e, ChunkComplete))
            assert samples == pytest.approx(expected * chunks[0].sample_rate, abs=len(chunks))
            assert samples * 2 > 4 * bound  # far more than the bound went through
            assert [a.idx for a in chunks] == list(range(len(chunks)))

    h.run(scenario)


def test_sync_adapter_in_executor_of_running_loop(server: Any) -> None:
    def blocking() -> list[Any]:
        with kw_sync.connect_stream(server.url, voice_id=1) as stream:
            turn = stream.send_text("From a worker thread.", flush=True)
            assert turn is not None
            return turn.collect()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, blocking), 10)

    events = asyncio.run(main())
    check_turn(events, 0)


def test_anyio_connections_are_task_group_scoped(server: Any) -> None:
    import anyio

    from kugelwire.transports import anyio as kw_anyio

    async def main() -> None:
        with pytest.raises(LocalProtocolError, match="async with"):
            await kw_anyio.connect_stream(server.url)  # type: ignore[misc]
        async with kw_anyio.connect_stream(server.url, voice_id=1) as stream:
            turn = await stream.send_text("Scoped.", flush=True)
            events = await turn.collect()
            check_turn(events, 0)
        assert stream.closed  # leaving the block closed the connection

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
