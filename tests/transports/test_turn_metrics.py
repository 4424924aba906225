"""TurnMetrics and client logging over real sockets, on every adapter.

The exact values are checked on the sessions with a fake clock (tests/protocol); here each
adapter must hand the metrics out on its terminal events with times from its own clock (inside
the window the scenario measured around the turn, in order), audio figures that match the
events it delivered, ``cancelled`` after a barge-in and ``reconnects`` after a replay. The logs
(``kugelwire.client``) have one line per connection open / close, per reconnect and per error
frame, the per-turn line at DEBUG, and never the API key.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pytest
import trio

from kugelwire import TurnMetrics
from kugelwire.errors import ConnectionFailed, ServerErrorResponse
from kugelwire.protocol import (
    AudioChunk,
    ContextClosed,
    Interrupted,
    RequestFinal,
    TurnClosed,
    TurnFinal,
)

from .conftest import AUTH_KEY, Harness, RestartServer

pytestmark = pytest.mark.timeout(60)

LONG = " ".join(f"This is sentence number {i}." for i in range(12))
FAST = {"reconnect": True, "reconnect_delay": 0.02, "max_reconnect_delay": 0.2}


def clock(h: Harness) -> Callable[[], float]:
    """The clock the adapter passes to the core as ``now``."""
    if h.name == "asyncio":
        return lambda: asyncio.get_running_loop().time()
    if h.name == "trio":
        return trio.current_time
    if h.name.startswith("anyio"):
        return anyio.current_time
    return time.monotonic


def audio(events: list[Any]) -> list[AudioChunk]:
    return [e for e in events if isinstance(e, AudioChunk)]


def check(m: TurnMetrics | None, t0: float, t1: float, chunks: list[AudioChunk]) -> TurnMetrics:
    """Plausible and consistent with what was delivered: times in order inside [t0, t1]."""
    assert isinstance(m, TurnMetrics)
    assert m.first_text_at is not None and m.flushed_at is not None
    assert m.first_audio_at is not None
    assert t0 <= m.first_text_at <= m.flushed_at <= m.first_audio_at <= m.ended_at <= t1
    ttfa = m.time_to_first_audio
    assert ttfa is not None and 0 < ttfa < 5
    assert m.audio_chunks == len(chunks) > 0
    assert m.audio_seconds == pytest.approx(sum(c.duration_s for c in chunks))
    return m


def test_stream_turn(h: Harness, server: Any) -> None:
    now = clock(h)

    async def scenario() -> None:
        async with await h.connect_stream(server.url, voice_id=1) as stream:
            for n in range(2):
                t0 = now()
                turn = await stream.send_text(f"Turn number {n}. It has two sentences.",
                                              flush=True)
                events = await turn.collect()
                t1 = now()
                closed = events[-1]
                assert isinstance(closed, TurnClosed)
                m = check(closed.metrics, t0, t1, audio(events))
                assert (m.turn, m.context_id, m.cancelled, m.reconnects) == (n, None, False, 0)
                assert m.flush_to_first_audio == m.time_to_first_audio  # flushed with the text

    h.run(scenario)


def test_tts_request(h: Harness, server: Any) -> None:
    now = clock(h)

    async def scenario() -> None:
        async with await h.connect_tts(server.url, voice_id=1) as tts:
            t0 = now()
            events = await tts.synthesize("A one-shot request.").collect()
            t1 = now()
            assert isinstance(events[-1], RequestFinal)
            m = check(events[-1].metrics, t0, t1, audio(events))
            assert not m.cancelled and m.reconnects == 0
            assert m.first_text_at == m.flushed_at

    h.run(scenario)


def test_multi_cycle_and_context(h: Harness, server: Any) -> None:
    now = clock(h)

    async def scenario() -> None:
        async with await h.connect_multi(server.url) as multi:
            ctx = await multi.create_context("a", voice_id=1)
            t0 = now()
            await ctx.send_text("First cycle speaks.", flush=True)
            events = [e async for e in ctx.until_final()]
            t1 = now()
            assert isinstance(events[-1], TurnFinal)
            m = check(events[-1].metrics, t0, t1, audio(events))
            assert (m.turn, m.context_id, m.cancelled) == (0, "a", False)
            await ctx.close()
            rest = await ctx.collect()
            t2 = now()
            assert isinstance(rest[-1], ContextClosed)
            total = rest[-1].metrics
            assert total is not None and total.context_id == "a" and not total.cancelled
            assert total.first_text_at == m.first_text_at
            assert total.first_audio_at == m.first_audio_at
            assert m.ended_at <= total.ended_at <= t2
            assert total.audio_chunks == len(audio(events + rest))

    h.run(scenario)


def test_cancelled_turn(h: Harness, slow_server: Any) -> None:
    async def scenario() -> None:
        async with await h.connect_stream(slow_server.url, voice_id=1) as stream:
            turn = await stream.send_text(LONG, flush=True)
            got = []
            async for event in turn:
                got.append(event)
                if isinstance(event, AudioChunk):
                    break
            await stream.cancel()
            rest = await turn.collect()
            stop = rest[-1]
            assert isinstance(stop, Interrupted)
            m = stop.metrics
            assert m is not None and m.cancelled and m.turn == 0
            assert m.first_audio_at is not None and m.first_audio_at <= m.ended_at
            assert m.audio_chunks >= len(audio(got)) == 1  # some may be dropped by the cancel
            nxt = await stream.send_text("Next one.", flush=True)
            closed = (await nxt.collect())[-1]
            assert isinstance(closed, TurnClosed)
            assert closed.metrics is not None and not closed.metrics.cancelled

    h.run(scenario)


def test_replayed_turn_counts_the_reconnect(h: Harness) -> None:
    now = clock(h)
    with RestartServer(["restart_before_audio"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, restart_delay=0.05) as stream:
                t0 = now()
                turn = await stream.send_text("Replay me please.", flush=True)
                events = await turn.collect()
                t1 = now()
                assert isinstance(events[-1], TurnClosed) and stream.restarts == 1
                m = check(events[-1].metrics, t0, t1, audio(events))
                assert m.reconnects == 1
                # the times are the first connection's: the restart delay is in the latency
                assert m.first_audio_at - m.first_text_at >= 0.05
                nxt = await stream.send_text("After the restart.", flush=True)
                after = (await nxt.collect())[-1]
                assert isinstance(after, TurnClosed)
                assert after.metrics is not None and after.metrics.reconnects == 0

        h.run(scenario)
    assert srv.connections == 2


def test_replayed_request_and_context_count_the_reconnects(h: Harness) -> None:
    drop = "reset_before_audio"
    with RestartServer([drop, drop, "normal", drop]) as srv:

        async def scenario() -> None:
            async with await h.connect_tts(srv.url, voice_id=1, **FAST) as tts:
                events = await tts.synthesize("Replay this request.").collect()
                assert isinstance(events[-1], RequestFinal)
                m = events[-1].metrics
                assert m is not None and m.reconnects == 2 and m.audio_chunks > 0
            async with await h.connect_multi(srv.url, **FAST) as multi:
                ctx = await multi.create_context("a", voice_id=1)
                await ctx.send_text("Replay this context.", flush=True)
                cycle = [e async for e in ctx.until_final()]
                assert isinstance(cycle[-1], TurnFinal)
                assert cycle[-1].metrics is not None and cycle[-1].metrics.reconnects == 1
                await ctx.send_text("A second cycle.", flush=True)
                second = [e async for e in ctx.until_final()]
                assert second[-1].metrics is not None and second[-1].metrics.reconnects == 0
                await ctx.close()
                closed = (await ctx.collect())[-1]
                assert isinstance(closed, ContextClosed)
                assert closed.metrics is not None and closed.metrics.reconnects == 1

        h.run(scenario)
    assert srv.connections == 5


def test_context_totals_span_the_reconnect(h: Harness) -> None:
    with RestartServer(["reset_after_first_chunk"]) as srv:

        async def scenario() -> None:
            async with await h.connect_multi(srv.url, **FAST) as multi:
                ctx = await multi.create_context("a", voice_id=1)
                await ctx.send_text("First cycle.", flush=True)
                first = [e async for e in ctx.until_final()]
                m0 = first[-1].metrics
                assert m0 is not None and m0.reconnects == 0 and m0.audio_chunks > 0
                await ctx.send_text("Second cycle.", flush=True)  # dropped before its audio
                second = [e async for e in ctx.until_final()]
                m1 = second[-1].metrics
                assert isinstance(second[-1], TurnFinal) and m1 is not None
                assert m1.reconnects == 1 and m1.audio_chunks > 0
                assert m0.ended_at <= m1.first_text_at <= m1.first_audio_at
                await ctx.close()
                rest = await ctx.collect()
                total = rest[-1].metrics
                assert isinstance(rest[-1], ContextClosed) and total is not None
                assert total.reconnects == 1
                assert total.first_text_at == m0.first_text_at
                assert total.first_audio_at == m0.first_audio_at
                assert total.audio_chunks == len(audio(first + second + rest))
                assert total.audio_chunks == m0.audio_chunks + m1.audio_chunks
                assert total.audio_seconds == pytest.approx(m0.audio_seconds + m1.audio_seconds)

        h.run(scenario)
    assert srv.connections == 2


# -- logging ------------------------------------------------------------------------------------
def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("kugelwire.client")]


def _no_key(caplog: pytest.LogCaptureFixture) -> None:
    """The key appears in no log line and no record attribute, in no spelling."""
    spellings = {AUTH_KEY, quote(AUTH_KEY, safe=""), quote_plus(AUTH_KEY), quote(AUTH_KEY)}
    everything = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for spelling in spellings:
        assert spelling not in everything


def test_logs_connections_errors_and_turns_without_the_key(
    h: Harness, auth_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kugelwire.client")

    async def scenario() -> None:
        async with await h.connect_stream(auth_server.url, api_key=AUTH_KEY,
                                          voice_id=1) as stream:
            await (await stream.send_text("Logged turn.", flush=True)).collect()
        # the key in the URL's query string instead, and a refused turn (an error frame)
        url = f"{auth_server.url}/ws/tts/stream?api_key={quote(AUTH_KEY, safe='')}"
        async with await h.connect_stream(url, voice_id=99999) as stream:
            with pytest.raises(ServerErrorResponse):
                await (await stream.send_text("Nobody speaks this.", flush=True)).collect()
        async with await h.connect_tts(auth_server.url, api_key=AUTH_KEY, auth="bearer",
                                       voice_id=1) as tts:
            await tts.synthesize("Bearer request.").collect()

    h.run(scenario)
    records = _records(caplog)
    lines = [r.getMessage() for r in records]
    opens = [r for r in records if getattr(r, "kugelwire_event", None) == "open"]
    closes = [r for r in records if getattr(r, "kugelwire_event", None) == "close"]
    assert len(opens) == len(closes) == 3
    assert [r.endpoint for r in opens] == ["/ws/tts/stream", "/ws/tts/stream", "/ws/tts"]
    host, port = auth_server.url.removeprefix("ws://").rsplit(":", 1)
    assert all(r.peer == f"{host}:{port}" for r in opens + closes)
    assert all(r.code == 1000 and r.levelno == logging.INFO for r in closes)
    assert all(r.duration_s >= 0 for r in closes)
    assert any("close endpoint=/ws/tts/stream" in line and "code=1000" in line
               for line in lines)
    [error] = [r for r in records if getattr(r, "kugelwire_event", None) == "error"]
    assert error.levelno == logging.WARNING and error.error_code == "NOT_FOUND"
    assert error.turn == 0 and "error_code=NOT_FOUND" in error.getMessage()
    turns = [r for r in records if getattr(r, "kugelwire_event", None) == "turn"]
    assert [r.name for r in turns] == ["kugelwire.client.turns"] * 2
    assert all(r.levelno == logging.DEBUG and isinstance(r.metrics, TurnMetrics)
               for r in turns)
    assert "ttfa_s=" in turns[0].getMessage() and "cancelled=False" in turns[0].getMessage()
    _no_key(caplog)


def test_failed_connect_logged_without_the_key(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kugelwire.client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{port}/ws/tts/stream?api_key={quote(AUTH_KEY, safe='')}"
        with pytest.raises(ConnectionFailed) as info:
            await h.connect_stream(url, connect_timeout=2.0)
        # the error names the URL it was given, with the key masked there too
        assert "api_key=***" in str(info.value) and AUTH_KEY not in str(info.value)

    h.run(scenario)
    [close] = [r for r in _records(caplog) if getattr(r, "kugelwire_event", None) == "close"]
    assert close.levelno == logging.WARNING and close.connected is False
    assert "ConnectionFailed" in close.error and "api_key=***" in close.error
    _no_key(caplog)


def test_reconnect_is_logged(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kugelwire.client")
    with RestartServer(["close1011_before_audio"]) as srv:

        async def scenario() -> None:
            async with await h.connect_stream(srv.url, voice_id=1, api_key=AUTH_KEY,
                                              **FAST) as stream:
                await (await stream.send_text("Replay me.", flush=True)).collect()

        h.run(scenario)
    records = _records(caplog)
    kinds = [getattr(r, "kugelwire_event", None) for r in records]
    assert kinds == ["open", "close", "reconnect", "open", "close"]
    first_close, reconnect = records[1], records[2]
    assert first_close.code == 1011 and first_close.connected is True
    assert reconnect.attempt == 1 and reconnect.code == 1011 and reconnect.replayed == ("0",)
    assert "reconnect endpoint=/ws/tts/stream" in reconnect.getMessage()
    assert [r.connection for r in records if r.kugelwire_event in ("open", "close")] == [
        0, 0, 1, 1]
    _no_key(caplog)


# -- the core alone, on a fake clock: the reconnect's figures to the exact value ---------------
class _MemoryServer:
    """One in-memory server connection (the sans-IO server core) for a ClientCore; with
    ``restart`` it closes 1012 when the first chunk reaches its engine, before any audio."""

    def __init__(self, now: float, *, restart: bool) -> None:
        from kugelwire.protocol._server import StreamServerSession
        from kugelwire.protocol._ws import ServerConnection

        self.restart = restart
        self.session = StreamServerSession()
        self.conn = ServerConnection(lambda path: self.session, now=now)

    def exchange(self, core: Any, now: float) -> None:
        """Move bytes both ways (answering synthesis at once) until both sides are quiet."""
        from kugelwire.protocol._server import SynthesisRequested

        for _ in range(100):
            if core.wants_socket:  # its bytes are for the next socket now
                return
            out = core.data_to_send()
            if out:
                self.conn.receive_data(out, now)
            list(self.conn.events())
            for event in self.session.events():
                if not isinstance(event, SynthesisRequested):
                    continue
                if self.restart:
                    self.conn.close(1012, "restarting")
                    break
                pcm = bytes(2 * event.params.sample_rate // 10)  # 100 ms
                self.session.send_audio(event.ref, pcm, now)
                self.session.complete_chunk(event.ref, 1.0, now)
            back = self.conn.data_to_send()
            if back:
                core.receive_data(back, now)
            if not out and not back:
                return
        raise AssertionError("the exchange did not settle")


def test_core_reconnect_metrics_and_log_durations_exact(caplog: pytest.LogCaptureFixture) -> None:
    from kugelwire.transports._core import ClientCore

    caplog.set_level(logging.DEBUG, logger="kugelwire.client")
    core = ClientCore("stream", "ws://127.0.0.1:9", now=0.0, restart_delay=0.5,
                      ping_interval=None, api_key=AUTH_KEY, voice_id=1)
    first = _MemoryServer(0.0, restart=True)
    first.exchange(core, 0.25)  # the upgrade completes at 0.25
    assert core.state == "open"
    buf = core.stream_send_text("Replay me.", now=1.0, flush=True)
    first.exchange(core, 1.0)  # the server restarts: the turn had no audio, it is replayed
    assert core.wants_socket and core.reconnect_at == 1.5
    core.take_stale_data()
    core.socket_opened(1.5)
    second = _MemoryServer(1.5, restart=False)
    second.exchange(core, 2.0)
    events = []
    while not buf.exhausted:
        event = core.pop(buf)
        assert event is not None
        events.append(event)
    closed = events[-1]
    assert isinstance(closed, TurnClosed)
    chunks = audio(events)
    assert closed.metrics == TurnMetrics(
        turn=0, context_id=None, first_text_at=1.0, flushed_at=1.0, first_audio_at=2.0,
        ended_at=2.0, audio_seconds=sum(c.duration_s for c in chunks), audio_chunks=len(chunks),
        cancelled=False, reconnects=1,
    )
    assert closed.metrics.time_to_first_audio == 1.0  # the restart is in the latency
    records = [r for r in caplog.records if hasattr(r, "kugelwire_event")]
    kinds = [r.kugelwire_event for r in records]
    assert kinds == ["open", "close", "reconnect", "open", "turn"]
    assert records[1].duration_s == 0.75 and records[1].code == 1012
    assert records[2].delay_s == 0.5
    assert records[4].metrics == closed.metrics
    _no_key(caplog)
