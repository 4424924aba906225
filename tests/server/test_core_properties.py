"""Hypothesis tests of the sans-IO server core (no sockets, no threads, no clock): a client
core talks to a :class:`ConnectionCore` through bytes split at random, engine jobs progress
in a random order, and the server may be shut down or the connection dropped at any point.

Whatever happens: every turn the client flushed ends with ``final`` + ``session_closed`` or the
connection ends (a documented close code: 1000, 1012, 1013, or a drop), no job outlives its
connection (the core's counters all return to 0), and the engine is never asked for more
concurrent calls than its slots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._client import StreamClientSession
from kugelwire.protocol._events import AudioChunk, ConnectionTerminated, TurnClosed, TurnFinal
from kugelwire.protocol._ws import ClientConnection, ConnectionClosed, ConnectionState
from kugelwire.server._core import EngineJob, ServerCore, ServerOptions, SocketAction

KEY = "core-key"
IDLE = {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}


class _Engine:
    """Three pieces of audio per chunk, ``piece`` bytes each, no I/O; counts generators left
    open. A piece longer than a step of the core (see ``ServerCore._emit``) goes out in
    steps."""

    max_concurrency = 2

    def __init__(self, piece: int = 960) -> None:
        self.open = 0
        self.piece = piece

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        self.open += 1
        try:
            for _ in range(3):
                yield b"\x01\x00" * (self.piece // 2)
        finally:
            self.open -= 1


class _World:
    def __init__(self, limit: int, piece: int = 960) -> None:
        self.now = 0.0
        self.engine = _Engine(piece)
        self.core = ServerCore(ServerOptions(engine=self.engine, api_key=KEY, ping_interval=None,
                                             write_buffer_limit=limit))
        self.conn = self.core.connect(self.now)
        self.session = StreamClientSession(voice_id=1)
        self.client = ClientConnection(self.session, "ws://127.0.0.1:1/ws/tts/stream",
                                       api_key=KEY, now=self.now, keepalive_interval=None)
        self.c2s = bytearray(self.client.data_to_send())
        self.s2c = bytearray()
        self.inflight: list[EngineJob] = []
        self.taken: list[EngineJob] = []
        self.events: list[Any] = []
        self.conn_events: list[Any] = []
        self.turns: list[int] = []
        self.gone = False
        self.peak_busy = 0

    # -- the adapter's duties ------------------------------------------------------------------
    def pump(self) -> None:
        if self.gone:
            return
        conn = self.conn
        self.s2c += conn.data_to_send()
        conn.report_buffered(len(self.s2c))
        if conn.action in (SocketAction.ABORT, SocketAction.RESET):
            self.drop()
        elif conn.action is SocketAction.CLOSE and not self.s2c:
            self.client.receive_data(b"", self.now)
            self.collect()
            self.drop()
        self.take()

    def take(self) -> None:
        jobs = self.core.take_jobs()
        self.taken += jobs
        self.inflight += jobs
        self.peak_busy = max(self.peak_busy, len(self.inflight))

    def drop(self) -> None:
        if not self.gone:
            self.gone = True
            self.conn.connection_lost(self.now)
            if self.client.state is not ConnectionState.CLOSED:
                self.client.receive_data(b"", self.now)
                self.collect()
            self.take()

    def collect(self) -> None:
        self.c2s += self.client.data_to_send()
        self.conn_events += self.client.events()
        self.events += self.session.events()

    # -- the steps hypothesis picks --------------------------------------------------------
    def to_server(self, n: int) -> None:
        if self.c2s and not self.gone:
            chunk, self.c2s[:n] = bytes(self.c2s[:n]), b""
            self.conn.receive_data(chunk, self.now)
            self.pump()

    def to_client(self, n: int) -> None:
        if self.s2c:
            chunk, self.s2c[:n] = bytes(self.s2c[:n]), b""
            self.client.receive_data(chunk, self.now)
            self.collect()
            if not self.gone:
                self.conn.report_buffered(len(self.s2c))
            self.pump()

    def job(self, i: int) -> None:
        if self.inflight:
            job = self.inflight.pop(i % len(self.inflight))
            item = job.advance()
            self.core.job_done(job, item, 0.001, None, self.now)
            self.pump()

    def turn(self) -> None:
        if self.client.state is ConnectionState.OPEN and len(self.turns) < 3:
            turn = self.session.send_text("One sentence. And another one.", self.now, flush=True)
            assert turn is not None
            self.turns.append(turn)
            self.collect()

    def tick(self, dt: float) -> None:
        self.now += dt
        if not self.gone:
            deadline = self.conn.next_deadline()
            if deadline is not None and self.now >= deadline:
                self.conn.handle_timeout(self.now)
                self.pump()
        self.client.handle_timeout(self.now)
        self.collect()

    def shutdown(self) -> None:
        self.core.shutdown(1012, self.now)
        self.pump()

    def settle(self) -> None:
        """Let everything finish: deliver all bytes, run every job, let timers fire."""
        for _ in range(5000):
            if self.c2s and not self.gone:
                self.to_server(len(self.c2s))
            elif self.s2c:
                self.to_client(len(self.s2c))
            elif self.inflight:
                self.job(0)
            elif not self.gone and self.conn.next_deadline() is not None:
                self.tick(max(0.0, self.conn.next_deadline() - self.now) + 0.001)  # type: ignore[operator]
            else:
                return


STEP = st.one_of(
    st.tuples(st.just("to_server"), st.integers(1, 300)),
    st.tuples(st.just("to_client"), st.integers(1, 3000)),
    st.tuples(st.just("job"), st.integers(0, 7)),
    st.tuples(st.just("turn"), st.none()),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, max_size=80), limit=st.sampled_from([512, 4096, 2**20]),
       shutdown_at=st.none() | st.integers(0, 40), drop_at=st.none() | st.integers(0, 40),
       piece=st.sampled_from([960, 3 * 9600 + 200]))
# a job paused by flow control (its generator started) when the client vanishes
@example(steps=[("to_server", 300), ("to_client", 3000), ("turn", None), ("to_server", 300),
                ("job", 0), ("tick", 0.0)], limit=512, shutdown_at=None, drop_at=5, piece=960)
# long pieces, sent in steps, while the client reads in small pieces
@example(steps=[("to_server", 300), ("to_client", 3000), ("turn", None), ("to_server", 300),
                ("job", 0), ("to_client", 700), ("tick", 0.0), ("to_client", 700),
                ("tick", 0.0)], limit=512, shutdown_at=None, drop_at=None, piece=3 * 9600 + 200)
def test_every_turn_ends_and_no_job_outlives_its_connection(
    steps: list[tuple[str, Any]], limit: int, shutdown_at: int | None, drop_at: int | None,
    piece: int,
) -> None:
    w = _World(limit, piece)
    w.pump()
    for i, (name, arg) in enumerate(steps):
        if i == shutdown_at:
            w.shutdown()
        if i == drop_at:
            w.drop()
        getattr(w, name)(*(() if arg is None else (arg,)))
        assert len(w.inflight) <= w.core.options.slots
    w.settle()
    interrupted = w.gone or w.core.draining is not None
    if not interrupted:  # nothing cut the connection short: every turn must have ended
        for turn in w.turns:
            assert any(isinstance(e, TurnClosed) and e.turn == turn for e in w.events), turn
    for e in w.events:  # a turn that ended got all its audio (three pieces per chunk)
        if isinstance(e, TurnClosed):
            assert e.total_text_chunks and e.total_audio_seconds == pytest.approx(
                3 * e.total_text_chunks * (piece // 2) / 24000), e
            audio = sum(len(a.data) for a in w.events
                        if isinstance(a, AudioChunk) and a.turn == e.turn)
            assert audio == 3 * e.total_text_chunks * piece, (audio, e)
    closed = next((e for e in w.conn_events if isinstance(e, ConnectionClosed)), None)
    for turn in w.turns:
        done = {type(e) for e in w.events if getattr(e, "turn", None) == turn}
        if not {TurnFinal, TurnClosed} <= done:
            assert w.gone, f"turn {turn} neither ended nor was the connection closed"
            code = closed.code if closed is not None else None
            assert code in (None, 1000, 1012, 1013), code
    if not w.gone:  # the client went away in the end: nothing may stay behind
        w.drop()
        w.settle()
    terminated = [e for e in w.events if isinstance(e, ConnectionTerminated)]
    assert len(terminated) <= 1
    assert w.core.stats() == IDLE
    assert w.conn.outstanding == 0
    assert all(job.done for job in w.taken), "a started generator was never run to its end"
    assert w.peak_busy <= w.core.options.slots
