"""Every server scenario on every backend (asyncio, trio, anyio, sync) and on the ASGI app under
real uvicorn and real hypercorn: loopback sockets, the sans-IO core, the ToneEngine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kugelwire.protocol._client import MultiClientSession, StreamClientSession, TTSClientSession
from kugelwire.protocol._events import (
    AudioChunk,
    ContextClosed,
    Interrupted,
    RequestFinal,
    ServerError,
    TurnAborted,
    TurnClosed,
    TurnFinal,
    WordTimestamps,
)
from kugelwire.synth import ToneEngine

from ._client import RawClient
from ._servers import KINDS, served

pytestmark = [pytest.mark.timeout(30), pytest.mark.parametrize("kind", KINDS)]

KEY = "local-test-key"
TEXT = "Hello world. This is a streamed turn with several words! And a third sentence?"


def run(coro: Callable[[], Awaitable[None]], timeout: float = 15.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(main())


def samples(client: RawClient, **match: Any) -> int:
    return sum(
        e.samples
        for e in client.of(AudioChunk)
        if all(getattr(e, k) == v for k, v in match.items())
    )


def test_stream_turn_audio_final_session_closed(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}"
            session = StreamClientSession(voice_id=1, language="en", word_timestamps=True)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            assert server.connections == 1
            for turn in range(2):
                session.send_text(TEXT, client.now)
                session.flush(client.now)
                client.flush()
                await client.pump(lambda t=turn: len(client.of(TurnClosed)) > t)
            finals = client.of(TurnFinal)
            closed = client.of(TurnClosed)
            assert len(finals) == 2 and len(closed) == 2
            for turn in range(2):
                got = samples(client, turn=turn)
                assert got > 0
                assert closed[turn].total_audio_seconds == pytest.approx(got / 24000, abs=1e-5)
                assert closed[turn].usage is not None
            words = [w.word for e in client.of(WordTimestamps) if e.turn == 0 for w in e.words]
            assert words == TEXT.split()
            session.close_socket(client.now)
            client.flush()
            closed_ev = await client.until_closed()
            assert closed_ev.code == 1000
            await client.aclose()

    run(main)


def test_multi_three_contexts(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY) as server:
            session = MultiClientSession(language="en")
            client = await RawClient(session, server.url, api_key=KEY).connect()
            ids = ["a", "b", "c"]
            for i, cid in enumerate(ids):
                session.create_context(cid, client.now, voice_id=i + 1)
                session.send_text(cid, f"Context {cid} says hello. ", client.now, flush=True)
            client.flush()
            await client.pump(lambda: len(client.of(TurnFinal)) == 3)
            for cid in ids:
                session.close_context(cid, client.now)
            client.flush()
            await client.pump(lambda: len(client.of(ContextClosed)) == 3)
            for cid in ids:
                assert samples(client, context_id=cid) > 0
            assert {e.context_id for e in client.of(ContextClosed)} == set(ids)
            await client.aclose()

    run(main)


def test_tts_request(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY) as server:
            session = TTSClientSession(voice_id=1, sample_rate=16000)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.request("One shot request. With two sentences.", client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(RequestFinal)))
            final = client.of(RequestFinal)[0]
            assert final.total_samples == samples(client) > 0
            assert all(e.sample_rate == 16000 for e in client.of(AudioChunk))
            await client.aclose()

    run(main)


def test_barge_in_cancels_engine_mid_chunk(kind: str) -> None:
    engine = ToneEngine(piece_ms=20, realtime_factor=1.0)  # generation at real time

    async def main() -> None:
        async with served(kind, api_key=KEY, engine=engine) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            words = " ".join(f"word{i}" for i in range(40))  # one chunk, ~10 s of audio
            session.send_text(words + ".", client.now, flush=True)
            client.flush()
            await client.pump(lambda: len(client.of(AudioChunk)) >= 2)
            session.cancel(client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(Interrupted)))
            await asyncio.sleep(0.2)  # the job task notices the token and closes the generator
            run_ = engine.runs[0]
            assert run_.cancelled or run_.closed_early
            assert not run_.finished
            assert 0 < run_.pieces_yielded < run_.pieces_planned // 4
            # the socket stays usable: a new turn after the barge-in
            session.send_text("Next.", client.now, flush=True)
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            await client.aclose()

    run(main)


def test_backpressure_slow_reader_pauses_synthesis(kind: str) -> None:
    limit = 256 * 1024
    engine = ToneEngine()
    text = " ".join(f"word{i % 97}" for i in range(1500)) + "."

    async def main() -> None:
        async with served(kind, api_key=KEY, engine=engine, write_buffer_limit=limit) as server:
            session = StreamClientSession(voice_id=1, sample_rate=24000)
            client = await RawClient(session, server.url, api_key=KEY, rcvbuf=64 * 1024).connect()
            session.send_text(text, client.now, flush=True)
            client.flush()
            await client.pump(lambda: bool(client.of(AudioChunk)))
            # stop reading for 2 s
            await asyncio.sleep(1.0)
            produced_1 = sum(r.samples_yielded for r in engine.runs)
            await asyncio.sleep(1.0)
            produced_2 = sum(r.samples_yielded for r in engine.runs)
            assert produced_1 == produced_2, "synthesis must be paused while the client stalls"
            assert not engine.runs[-1].finished, "the turn must still be unfinished"
            peak = server.peak_buffered
            assert peak <= limit + 64 * 1024, peak
            # resume: everything arrives
            await client.pump(lambda: bool(client.of(TurnClosed)), timeout=15)
            closed = client.of(TurnClosed)[0]
            got = samples(client)
            assert got == sum(r.samples_yielded for r in engine.runs)
            assert all(r.finished for r in engine.runs)
            assert closed.total_audio_seconds == pytest.approx(got / 24000, abs=1e-5)
            idx = [e.idx for e in client.of(AudioChunk)]
            assert idx == list(range(len(idx)))
            assert got / 24000 > 100  # far more than every buffer on the way
            print(f"peak buffered {peak} B (limit {limit} B), {got / 24000:.0f} s of audio")
            await client.aclose()

    run(main, timeout=18)


def test_shutdown_waits_for_busy_turn_then_1012(kind: str) -> None:
    engine = ToneEngine(piece_ms=50, realtime_factor=0.2)

    async def main() -> None:
        async with served(kind, api_key=KEY, engine=engine) as server:
            busy_s = StreamClientSession(voice_id=1)
            busy = await RawClient(busy_s, server.url, api_key=KEY).connect()
            idle = RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY)
            await idle.connect()
            busy_s.send_text("A busy turn with some words to speak. And more words.", busy.now,
                             flush=True)
            busy.flush()
            await busy.pump(lambda: bool(busy.of(AudioChunk)))
            t0 = time.monotonic()
            shutdown = asyncio.ensure_future(server.shutdown(1012))
            idle_closed = await idle.until_closed()
            assert idle_closed.code == 1012
            assert time.monotonic() - t0 < 0.5  # idle sockets close at once
            # a connection arriving while draining: accepted, then closed 1013
            late = RawClient(StreamClientSession(voice_id=1), server.url, api_key=KEY)
            await late.connect()
            assert late.connected
            assert (await late.until_closed()).code == 1013
            busy_closed = await busy.until_closed()
            assert busy_closed.code == 1012
            assert busy.of(TurnClosed), "the busy turn completes before the restart close"
            assert samples(busy) == sum(r.samples_yielded for r in engine.runs)
            await shutdown
            assert server.connections == 0
            for c in (busy, idle, late):
                await c.aclose()

    run(main)


def test_shutdown_with_a_queued_tts_request_closes_1012_after_the_current_one(kind: str) -> None:
    # /ws/tts queues requests: a restart finishes the one being spoken, starts nothing new and
    # closes, so the queued request (no audio yet) ends for the client as replayable.
    engine = ToneEngine(piece_ms=50, realtime_factor=0.2)

    async def main() -> None:
        async with served(kind, api_key=KEY, engine=engine) as server:
            session = TTSClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            first = session.request("A request with some words to speak. And more.", client.now)
            second = session.request("Queued behind the first one.", client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(AudioChunk)))
            shutdown = asyncio.ensure_future(server.shutdown(1012))
            closed = await client.until_closed(timeout=10)
            assert closed.code == 1012
            assert [f.turn for f in client.of(RequestFinal)] == [first]
            [aborted] = client.of(TurnAborted)
            assert aborted.turn == second and not aborted.audio_delivered
            assert aborted.unspoken_text == "Queued behind the first one."
            await asyncio.wait_for(shutdown, 10)
            assert server.connections == 0
            await client.aclose()

    run(main)


def test_bad_key_is_401(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY) as server:
            client = await RawClient(StreamClientSession(voice_id=1), server.url,
                                     api_key="wrong").connect()
            assert client.rejected is not None and client.rejected.status_code == 401
            await client.aclose()

    run(main)


class _FailingEngine:
    """Yields one piece, then raises (the runner must report it and carry on)."""

    max_concurrency = 1

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Any:
        yield b"\x01\x00" * 100
        raise RuntimeError("boom")


def test_engine_failure_is_an_error_frame_and_the_turn_ends(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY, engine=_FailingEngine()) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text("It fails.", client.now, flush=True)
            client.flush()
            await client.pump(lambda: bool(client.of(TurnClosed)))
            errors = client.of(ServerError)
            assert errors and errors[0].raw_code == "INTERNAL_ERROR"
            assert "boom" not in errors[0].message  # no internals leak to the client
            await client.aclose()

    run(main)


def test_disconnect_cancels_engine_mid_chunk(kind: str) -> None:
    engine = ToneEngine(piece_ms=20, realtime_factor=1.0)

    async def main() -> None:
        async with served(kind, api_key=KEY, engine=engine) as server:
            session = StreamClientSession(voice_id=1)
            client = await RawClient(session, server.url, api_key=KEY).connect()
            session.send_text(" ".join(["word"] * 40) + ".", client.now, flush=True)
            client.flush()
            await client.pump(lambda: bool(client.of(AudioChunk)))
            await client.aclose()  # drop the TCP connection mid-chunk
            run_ = engine.runs[0]
            for _ in range(50):
                if server.connections == 0 and (run_.cancelled or run_.closed_early):
                    break
                await asyncio.sleep(0.02)
            assert server.connections == 0
            assert not run_.finished and (run_.cancelled or run_.closed_early)
            assert run_.pieces_yielded < run_.pieces_planned // 4

    run(main)


def test_max_connections_refuses_with_503(kind: str) -> None:
    async def main() -> None:
        async with served(kind, api_key=KEY, max_connections=1) as server:
            first = await RawClient(StreamClientSession(voice_id=1), server.url,
                                    api_key=KEY).connect()
            second = await RawClient(StreamClientSession(voice_id=1), server.url,
                                     api_key=KEY).connect()
            assert first.connected
            assert second.rejected is not None and second.rejected.status_code == 503
            for c in (first, second):
                await c.aclose()

    run(main)
