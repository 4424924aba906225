"""One worker call advances an engine job several times (``kugelwire.server._adapter.advance``):
a fast engine needs few thread hops per chunk, a slow one still hands over each piece at once,
and what the client receives is exactly what one item per call gave."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kugelwire.protocol._client import StreamClientSession
from kugelwire.protocol._events import AudioChunk, ServerError, TurnClosed
from kugelwire.protocol._server import ServerLimits
from kugelwire.protocol._ws import ClientConnection
from kugelwire.server._adapter import BATCH_SECONDS, advance
from kugelwire.server._core import ConnectionCore, EngineJob, ServerCore, ServerOptions
from kugelwire.synth import ToneEngine

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello there, this is one short sentence."


class _Pair:
    """A stream client and one server connection, wired in memory."""

    def __init__(self, engine: Any, **options: Any) -> None:
        self.core = ServerCore(ServerOptions(engine=engine, limits=ServerLimits(),
                                             ping_interval=None, **options))
        self.conn: ConnectionCore = self.core.connect(0.0)
        self.session = StreamClientSession(voice_id=1, sample_rate=24000)
        self.client = ClientConnection(self.session, "ws://127.0.0.1:1/ws/tts/stream", now=0.0,
                                       keepalive_interval=None)
        self.events: list[Any] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(10):
            up = self.client.data_to_send()
            if up:
                self.conn.receive_data(up, 0.0)
            down = self.conn.data_to_send()
            self.conn.report_buffered(0)
            if down:
                self.client.receive_data(down, 0.0)
            self.events += list(self.session.events())
            if not up and not down:
                return

    def take(self) -> list[EngineJob]:
        return self.core.take_jobs()

    def run(self, batched: bool) -> list[int]:
        """Speak TEXT to the end; the number of items each worker call handed over."""
        self.session.send_text(TEXT, 0.0, flush=True)
        self.pump()
        calls = []
        while not any(isinstance(e, TurnClosed) for e in self.events):
            jobs = self.take()
            assert jobs, "nothing to run, but the turn is not over"
            for job in jobs:
                if batched:
                    items, seconds, error = advance(job)
                    self.core.batch_done(job, items, seconds, error, 0.0)
                    calls.append(len(items))
                else:
                    self.core.job_done(job, job.advance(), 0.0, None, 0.0)
                    calls.append(1)
            self.pump()
        return calls


def _audio(events: list[Any]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, AudioChunk)]


def test_a_fast_engine_hands_over_a_chunk_in_few_calls_and_the_wire_is_unchanged() -> None:
    one, many = _Pair(ToneEngine(piece_ms=20)), _Pair(ToneEngine(piece_ms=20))
    single = one.run(batched=False)
    batched = many.run(batched=True)
    # the same audio frames (one per 20 ms piece), in the same order, the same turn result
    assert _audio(many.events) == _audio(one.events)
    assert len(_audio(many.events)) > 50
    closed = [e for e in many.events if isinstance(e, TurnClosed)]
    assert closed and closed[0].total_audio_seconds == pytest.approx(
        next(e for e in one.events if isinstance(e, TurnClosed)).total_audio_seconds)
    assert len(batched) <= 4 < len(single), (batched, len(single))


def test_the_first_call_stops_at_a_frame_of_audio() -> None:
    pair = _Pair(ToneEngine(piece_ms=20))
    pair.session.send_text(TEXT, 0.0, flush=True)
    pair.pump()
    (job,) = pair.take()
    frame = 24000 * ServerLimits().frame_ms // 1000 * 2
    assert job.batch_bytes == frame
    items, _, error = advance(job)
    audio = sum(len(i) for i in items if isinstance(i, bytes))
    assert error is None and frame <= audio < frame + 960 * 2, audio  # ten 20 ms pieces
    assert job.batch_bytes == ServerOptions().write_buffer_limit // 8  # later calls: more
    pair.core.batch_done(job, items, 0.0, None, 0.0)
    pair.pump()
    assert sum(len(a) for a in _audio(pair.events)) == audio  # sent before the rest is made


def test_later_calls_stop_at_an_eighth_of_the_write_buffer_limit() -> None:
    limit = 64 * 1024
    pair = _Pair(ToneEngine(piece_ms=20), write_buffer_limit=limit)
    pair.session.send_text(" ".join(["word"] * 200) + ".", 0.0, flush=True)
    pair.pump()
    (job,) = pair.take()
    first, _, _ = advance(job)
    pair.core.batch_done(job, first, 0.0, None, 0.0)
    pair.pump()
    (job,) = pair.take()
    items, _, _ = advance(job)
    audio = sum(len(i) for i in items if isinstance(i, bytes))
    assert max(24000 * 2 // 5, limit // 8) <= audio < max(24000 * 2 // 5, limit // 8) + 960 * 2


class _Slow:
    """Each piece takes longer than the batch budget to make."""

    max_concurrency = 1

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        for _ in range(3):
            time.sleep(BATCH_SECONDS * 2)
            yield b"\x01\x00" * 10


def test_a_slow_engine_hands_over_each_piece_as_it_is_made() -> None:
    pair = _Pair(_Slow())
    calls = pair.run(batched=True)
    assert calls[:3] == [1, 1, 1], calls
    assert len(_audio(pair.events)) == 3


class _Failing:
    max_concurrency = 1

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        yield b"\x01\x00" * 10
        yield b"\x02\x00" * 10
        raise RuntimeError("engine broke")


def test_an_engine_error_mid_call_keeps_the_audio_before_it() -> None:
    many = _Pair(_Failing())
    calls = many.run(batched=True)
    assert calls == [2], calls  # both pieces and then the error, in one call
    assert _audio(many.events) == [b"\x01\x00" * 10, b"\x02\x00" * 10]
    errors = [e for e in many.events if isinstance(e, ServerError)]
    assert [e.raw_code or str(e.code) for e in errors] == ["INTERNAL_ERROR"], errors


def test_a_job_cancelled_between_calls_is_closed_not_advanced() -> None:
    engine = ToneEngine(piece_ms=20)
    pair = _Pair(engine)
    pair.session.send_text(" ".join(["word"] * 100) + ".", 0.0, flush=True)
    pair.pump()
    (job,) = pair.take()
    items, seconds, error = advance(job)
    pair.core.batch_done(job, items, seconds, error, 0.0)
    job.token.cancel()  # as a barge-in does (the core retires the job)
    items, _, _ = advance(job)
    assert items == [] and job.done
    assert engine.runs[-1].closed_early or engine.runs[-1].cancelled


class _Recording:
    """Records the thread each step runs on; ``inline`` as given."""

    max_concurrency = 4

    def __init__(self, inline: bool) -> None:
        self.inline = inline
        self.threads: set[str] = set()

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        for _ in range(3):
            self.threads.add(threading.current_thread().name)
            yield b"\x01\x00" * 480


@pytest.mark.parametrize("inline", [True, False])
def test_asyncio_runs_an_inline_engine_on_its_loop_and_others_in_threads(inline: bool) -> None:
    from kugelwire.server import serve
    from kugelwire.transports.asyncio import connect_stream

    engine = _Recording(inline)

    async def main() -> None:
        async with serve(engine=engine, api_key="k", lenient=True) as server, \
                await connect_stream(server.url, api_key="k", voice_id=1) as stream:
            turn = await stream.send_text("Hello there.", flush=True)
            assert turn is not None
            events = await asyncio.wait_for(turn.collect(), 10)
            assert sum(isinstance(e, AudioChunk) for e in events) == 3

    asyncio.run(main())
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs on this thread
    if inline:
        assert engine.threads == {loop_thread}
    else:
        assert engine.threads and all(t.startswith("kugelwire-engine") for t in engine.threads)


def test_the_tone_engine_is_inline_unless_paced_to_real_time() -> None:
    assert ToneEngine().inline and ServerOptions(engine=ToneEngine()).inline
    assert not ToneEngine(realtime_factor=0.5).inline
    assert not ServerOptions(engine=_Slow()).inline  # no attribute: worker threads


_FRAME = 24000 * ServerLimits().frame_ms // 1000  # samples per frame
_STEP_LIMIT = 8 * 4 * _FRAME * 2  # write_buffer_limit for steps of 4 frames (an eighth of it)


class _OnePiece:
    """Speaks every chunk as one long piece of PCM16 (like an engine that returns a sentence's
    audio at once): ``frames`` frames of the server's length at 24 kHz and a short tail."""

    max_concurrency = 4

    def __init__(self, frames: int) -> None:
        self.size = frames * _FRAME + 100  # samples

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        yield bytes((i * 7919 + (i >> 9)) & 0xFF for i in range(self.size * 2))


def _speak(pair: _Pair, stepped: list[int]) -> None:
    """Run the turn to its end; ``stepped``: the audio frames each step of the connection
    (a worker call's result, or a due deadline) sent."""
    pair.session.send_text(TEXT, 0.0, flush=True)
    pair.pump()
    while not any(isinstance(e, TurnClosed) for e in pair.events):
        before = len(_audio(pair.events))
        deadline = pair.conn.next_deadline()
        if deadline is not None and deadline <= 0.0:
            pair.conn.handle_timeout(0.0)
        else:
            jobs = pair.take()
            assert jobs, "nothing to run, but the turn is not over"
            for job in jobs:
                items, seconds, error = advance(job)
                pair.core.batch_done(job, items, seconds, error, 0.0)
        pair.pump()
        stepped.append(len(_audio(pair.events)) - before)


def test_a_long_piece_goes_out_in_steps_and_the_wire_is_unchanged() -> None:
    """The first frame of a long piece leaves before the rest is framed, the rest in steps of
    an eighth of ``write_buffer_limit``; the client gets the same frames as from one step."""
    stepped, whole = _Pair(_OnePiece(30), write_buffer_limit=_STEP_LIMIT), _Pair(
        _OnePiece(30), write_buffer_limit=2**24)
    steps: list[int] = []
    _speak(stepped, steps)
    _speak(whole, [])
    assert _audio(stepped.events) == _audio(whole.events)
    assert len(_audio(whole.events)) == 31  # 30 frames and the tail
    audio_steps = [n for n in steps if n]
    assert audio_steps[0] == 1 and audio_steps[1:] == [4] * 7 + [2], steps
    closed = [e for e in stepped.events if isinstance(e, TurnClosed)]
    assert closed and closed[0].total_audio_seconds == pytest.approx((30 * _FRAME + 100) / 24000)


def test_a_turn_cancelled_while_its_piece_goes_out_gets_no_more_of_it() -> None:
    pair = _Pair(_OnePiece(30), write_buffer_limit=_STEP_LIMIT)
    pair.session.send_text(TEXT, 0.0, flush=True)
    pair.pump()
    (job,) = pair.take()
    items, seconds, error = advance(job)
    pair.core.batch_done(job, items, seconds, error, 0.0)
    pair.pump()
    assert len(_audio(pair.events)) == 1 and pair.conn.next_deadline() == 0.0
    pair.session.cancel(0.0)
    pair.pump()
    for _ in range(20):  # whatever is due runs; the cancelled piece sends nothing more
        deadline = pair.conn.next_deadline()
        if deadline is None or deadline > 0.0:
            break
        pair.conn.handle_timeout(0.0)
        pair.pump()
    assert len(_audio(pair.events)) == 1
    assert pair.conn.next_deadline() is None or pair.conn.next_deadline() > 0.0
    assert not pair.conn._emitting and pair.core.stats()["jobs"] == 0
