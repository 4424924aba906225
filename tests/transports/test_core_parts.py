"""The pieces the client core delegates to, each on its own: how a connection ended
(:class:`Ending`), the retry policy (:class:`Backoff`), the log lines' redaction
(:class:`ClientLog`), one work's buffer (:class:`EventBuffer`) and all of them together with
their bound (:class:`WorkBuffers`). No connection, no session, no socket."""

from __future__ import annotations

import ast
import pathlib
from dataclasses import replace
from typing import Any

import pytest

from kugelwire.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionFailed,
    LocalProtocolError,
    ProtocolViolation,
    RateLimitError,
    SendBufferFull,
    ServerErrorResponse,
    ServerRestarting,
)
from kugelwire.protocol.errors import RemoteProtocolError
from kugelwire.protocol.events import (
    AudioChunk,
    ContextClosed,
    ErrorCode,
    ServerError,
    TurnClosed,
    TurnFinal,
    TurnMetrics,
    TurnReplay,
    TurnStarted,
)
from kugelwire.protocol.messages import AudioFrame
from kugelwire.protocol.ws import ConnectionClosed, HandshakeRejected
from kugelwire.transports._buffers import EventBuffer, WorkBuffers, combined
from kugelwire.transports._ending import Backoff, Ending
from kugelwire.transports._logging import ClientLog

from .test_core import FORBIDDEN

PARTS = ["_buffers.py", "_ending.py", "_logging.py"]
URL = "ws://127.0.0.1:9/ws/tts/stream"


def test_the_parts_import_no_io() -> None:
    for name in PARTS:
        path = pathlib.Path(__file__).resolve().parents[2] / "kugelwire" / "transports" / name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for module in names:
                assert module.split(".")[0] not in FORBIDDEN, (name, module)


# -- Ending ----------------------------------------------------------------------------------

def _closed(code: int | None, reason: str = "", error: Any = None) -> Ending:
    ending = Ending()
    ending.record(ConnectionClosed(code, reason, by_peer=True, error=error))
    return ending


def _rejected(status: int, retry_after: float | None = None) -> Ending:
    ending = Ending()
    ending.record(HandshakeRejected(status, (), b'{"error": "no"}', retry_after=retry_after))
    return ending


def _fatal(code: ErrorCode, close: int) -> Ending:
    ending = _closed(close)
    ending.fatal = ServerError(code, "bad", 401, fatal=True, retry_after=2.0)
    return ending


def test_ending_clean_only_for_a_normal_close_without_errors() -> None:
    assert _closed(1000).clean and _closed(1001).clean
    assert not _closed(1006).clean and not _closed(None).clean and not Ending().clean
    assert not _closed(1000, error=RemoteProtocolError("x")).clean
    io = _closed(1000)
    io.io_error = SendBufferFull("stuck")
    assert not io.clean


@pytest.mark.parametrize(
    ("ending", "reconnect", "reconnecting", "expected"),
    [
        (_rejected(503), False, False, True),
        (_rejected(500), False, False, False),
        (_rejected(500), True, False, True),
        (_rejected(401), True, False, False),
        (_rejected(429), True, False, False),
        (_rejected(404), True, False, False),
        (_closed(1012), False, False, True),
        (_closed(1013), False, False, True),
        (_closed(1006), False, False, False),
        (_closed(1006), True, False, True),
        (_closed(None), True, False, True),
        (_closed(1000), True, False, False),
        (_closed(4000), True, False, True),
        (_closed(4001), True, False, False),
        (_closed(4029), True, False, False),
        (_closed(1002, error=RemoteProtocolError("x")), True, False, False),
        (_fatal(ErrorCode.UNAUTHORIZED, 1011), True, False, False),
    ],
)
def test_ending_retryable(ending: Ending, reconnect: bool, reconnecting: bool,
                          expected: bool) -> None:
    assert ending.retryable(reconnect=reconnect, reconnecting=reconnecting) is expected


def test_ending_retryable_failed_connect_and_io_error() -> None:
    failed = Ending()
    failed.connect_exc = ConnectionRefusedError(111, "refused")
    assert not failed.retryable(reconnect=True, reconnecting=False)
    assert failed.retryable(reconnect=True, reconnecting=True)
    assert not failed.retryable(reconnect=False, reconnecting=True)
    stuck = Ending()
    stuck.io_error = SendBufferFull("the server stopped reading")
    assert stuck.retryable(reconnect=True, reconnecting=False)


def test_ending_reason() -> None:
    assert _closed(1012, "restart").reason == "close 1012: restart"
    assert _closed(1006).reason == "close 1006"
    assert _closed(None).reason == "connection dropped (no close frame)"
    assert Ending().reason == "connection dropped (no close frame)"
    assert _rejected(503).reason == "HTTP 503 at the upgrade"
    failed = Ending()
    failed.connect_exc = OSError("unreachable")
    assert failed.reason == "connect failed: unreachable"


def test_ending_error_types_carry_the_unspoken_text() -> None:
    def error(ending: Ending, state: str = "open") -> Any:
        return ending.error("said later", state=state, url=URL)

    auth = error(_rejected(401))
    assert type(auth) is AuthenticationError and auth.status_code == 401
    limited = error(_rejected(429, retry_after=3.0))
    assert type(limited) is RateLimitError and limited.retry_after == 3.0
    restarting = error(_rejected(503))
    assert type(restarting) is ServerRestarting and restarting.unspoken_text == "said later"
    assert type(error(_rejected(404))) is ConnectionFailed
    assert type(error(_closed(4001))) is AuthenticationError
    assert type(error(_fatal(ErrorCode.RATE_LIMITED, 1008))) is RateLimitError
    assert error(_fatal(ErrorCode.RATE_LIMITED, 1008)).retry_after == 2.0
    assert type(error(_fatal(ErrorCode.INTERNAL_ERROR, 1011))) is ServerErrorResponse
    closed = error(_closed(1006, "gone"))
    assert type(closed) is ConnectionClosedError and closed.unspoken_text == "said later"
    assert closed.message == "connection closed (code 1006: gone)"
    assert type(error(_closed(1002, error=RemoteProtocolError("x")))) is ProtocolViolation
    assert type(error(_closed(None), state="connecting")) is ConnectionFailed
    assert type(error(Ending())) is ConnectionClosedError
    failed = Ending()
    failed.connect_exc = ConnectionRefusedError(111, "refused")
    exc = error(failed)
    assert type(exc) is ConnectionFailed and isinstance(exc.__cause__, ConnectionRefusedError)
    assert URL in exc.message
    stuck = Ending()
    stuck.io_error = SendBufferFull("the server stopped reading")
    copy = error(stuck)
    assert type(copy) is SendBufferFull and copy is not stuck.io_error
    wrapped = error(_closed(1006), state="reconnecting")
    assert type(wrapped) is ServerRestarting and type(wrapped.__cause__) is ConnectionClosedError
    assert error(_closed(1006)) is not error(_closed(1006))  # a fresh instance each call


def test_ending_reconnecting_event() -> None:
    event = _closed(1012, "restart").reconnecting(2, 0.5, {3, 1})
    assert (event.attempt, event.close_code, event.reason, event.delay, event.replayed) == (
        2, 1012, "close 1012: restart", 0.5, ("1", "3"))
    assert _rejected(503, retry_after=7.0).retry_after == 7.0
    assert _closed(1013).restart_close and not _closed(1006).restart_close


# -- Backoff ---------------------------------------------------------------------------------

def _backoff(reconnect: bool, draw: float = 1.0) -> Backoff:
    return Backoff(reconnect=reconnect, restart_delay=1.0, max_restarts=1, max_reconnects=3,
                   reconnect_delay=0.1, max_reconnect_delay=0.5, random=lambda: draw)


def test_backoff_limits_and_delays() -> None:
    restarts, reconnects = _backoff(False), _backoff(True)
    assert restarts.allows(0) and not restarts.allows(1)
    assert reconnects.allows(2) and not reconnects.allows(3)
    assert restarts.delay(1, retry_after=None, restart_close=False) == 1.0
    assert reconnects.delay(5, retry_after=2.5, restart_close=False) == 2.5
    assert reconnects.delay(1, retry_after=None, restart_close=True) == 1.0
    full = [reconnects.delay(n, retry_after=None, restart_close=False) for n in (1, 2, 3, 4)]
    assert full == pytest.approx([0.1, 0.2, 0.4, 0.5])
    half = _backoff(True, draw=0.0)
    assert half.delay(2, retry_after=None, restart_close=False) == pytest.approx(0.1)


@pytest.mark.parametrize(("count", "delay", "most"), [(-1, 0.1, 1.0), (1, -0.1, 1.0),
                                                      (1, 2.0, 1.0)])
def test_backoff_rejects_bad_bounds(count: int, delay: float, most: float) -> None:
    with pytest.raises(LocalProtocolError):
        Backoff(reconnect=True, restart_delay=1.0, max_restarts=1, max_reconnects=count,
                reconnect_delay=delay, max_reconnect_delay=most, random=lambda: 0.5)


# -- ClientLog -------------------------------------------------------------------------------

def test_client_log_redacts_the_key_in_every_form() -> None:
    log = ClientLog("/ws/tts/stream", "s3cr/t")
    assert log.redact("key s3cr/t and s3cr%2Ft") == "key *** and ***"
    assert log.redact("wss://h/ws?api_key=other&x=1") == "wss://h/ws?api_key=***&x=1"
    assert ClientLog("/ws/tts", None).redact("?API_KEY=abc#f") == "?API_KEY=***#f"


# -- EventBuffer -----------------------------------------------------------------------------

def _audio(turn: int = 1, nbytes: int = 300, context_id: str | None = None) -> AudioChunk:
    frame = AudioFrame(audio="A" * (nbytes * 4 // 3), samples=nbytes // 2)
    return AudioChunk(turn, frame, 0.0, context_id)


def _metrics(**changes: Any) -> TurnMetrics:
    base = TurnMetrics(turn=1, context_id=None, first_text_at=1.0, flushed_at=2.0,
                       first_audio_at=3.0, ended_at=4.0, audio_seconds=0.5, audio_chunks=2)
    return replace(base, **changes)


def _filled(*events: Any) -> EventBuffer:
    buf = EventBuffer(1)
    for event in events:
        buf.events.append(event)
        buf.nbytes += len(event.frame.audio) * 3 // 4 if isinstance(event, AudioChunk) else 0
    return buf


def test_purges_return_what_they_removed() -> None:
    buf = _filled(TurnStarted(1), _audio(), _audio(), TurnFinal(1), _audio())
    assert buf.purge_cycle() == (1, 300)  # the output after the last final
    assert (len(buf.events), buf.nbytes) == (4, 600)
    assert buf.purge_cancelled(cycles=False) == (3, 600) and buf.flushed
    assert [type(e) for e in buf.events] == [TurnStarted]
    full = _filled(_audio(), _audio(nbytes=150))
    assert full.clear() == (2, 450) and not full.events and full.nbytes == 0


def test_combined_adds_the_audio_and_keeps_the_first_times() -> None:
    before = _metrics(first_text_at=0.5, flushed_at=None, first_audio_at=3.5)
    both = combined(before, _metrics())
    assert (both.first_text_at, both.flushed_at, both.first_audio_at) == (0.5, 2.0, 3.0)
    assert (both.audio_seconds, both.audio_chunks, both.ended_at) == (1.0, 4, 4.0)
    assert combined(None, _metrics()) == _metrics()


def test_stamp_puts_the_reconnects_and_first_send_times_on_the_metrics() -> None:
    buf = EventBuffer(1)
    closed = TurnClosed(1, None, metrics=_metrics(first_text_at=5.0, flushed_at=6.0))
    assert buf.stamp(closed) is closed  # never replayed: as it came
    buf.carry_over(TurnReplay(1, "Hi.", True, True, "", first_text_at=0.5, flushed_at=0.7))
    stamped = buf.stamp(closed).metrics
    assert stamped is not None
    assert (stamped.reconnects, stamped.first_text_at, stamped.flushed_at) == (1, 0.5, 0.7)
    assert buf.stamp(closed) is closed  # counted once


def test_stamp_of_a_context_adds_up_its_cycles_across_reconnects() -> None:
    buf = EventBuffer(0, "c")
    buf.stamp(TurnFinal(1, context_id="c", metrics=_metrics(audio_chunks=1)))
    buf.carry_over(TurnReplay(2, "more", True, True, "", context_id="c", first_text_at=9.0))
    cycle = buf.stamp(TurnFinal(1, context_id="c", metrics=_metrics(first_text_at=10.0)))
    assert cycle.metrics is not None and cycle.metrics.reconnects == 1
    end = buf.stamp(ContextClosed("c", metrics=_metrics(audio_chunks=3)))
    assert end.metrics is not None
    assert (end.metrics.reconnects, end.metrics.audio_chunks) == (1, 4)  # 1 before + 3 after


# -- WorkBuffers -----------------------------------------------------------------------------

def test_work_buffers_pause_at_the_bound_and_resume_on_pop() -> None:
    work = WorkBuffers(max_buffered_bytes=600, max_buffered_events=100)
    buf = work._add(EventBuffer(1))
    work._push(buf, _audio())
    assert not work.reading_paused
    work._push(buf, _audio())
    assert work.reading_paused and (work.buffered_bytes, work.buffered_events) == (600, 2)
    assert work.pop(buf) is not None
    assert not work.reading_paused and work.take_resumed() and not work.take_resumed()
    work._push(buf, TurnClosed(1, None), terminal=True)
    assert buf.done and work._by_key == {} and work._live == []
    assert work.pop(buf) is not None and work.pop(buf) is not None
    assert buf.exhausted and work.pop(buf) is None
    assert (work.buffered_bytes, work.buffered_events) == (0, 0)


def test_work_buffers_fail_and_discard_dropped_work() -> None:
    work = WorkBuffers(max_buffered_bytes=10_000, max_buffered_events=100)
    kept, dropped = work._add(EventBuffer(1)), work._add(EventBuffer(2))
    for buf in (kept, dropped):
        work._push(buf, _audio(buf.number or 0))
    dropped.flushed = True
    work.handle_dropped(dropped)
    assert not work.reading_paused and work.buffered_events == 1  # collected on the way
    assert not dropped.events and dropped.nbytes == 0
    work._end_all(lambda: ConnectionClosedError("gone"), but=())
    assert kept.done and dropped.done and work._live == []
    assert work.pop(kept) is not None
    with pytest.raises(ConnectionClosedError) as info:
        work.pop(kept)
    assert info.value.turn == 1
    with pytest.raises(LocalProtocolError):
        WorkBuffers(0, 1)
