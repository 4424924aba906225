"""Server metrics (``GET /metrics``) and the connection / error log lines."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kugelwire.errors import AuthenticationError
from kugelwire.protocol._events import AudioChunk, Interrupted, RequestFinal, TurnFinal
from kugelwire.server import Metrics, ServerOptions, run_in_thread
from kugelwire.server._metrics import ObservedSession
from kugelwire.synth import ToneEngine
from kugelwire.transports import sync as kw_sync

from ._prom import get, parse, scrape

pytestmark = pytest.mark.timeout(60)

KEY = "sk-metrics-SECRET-4711"
N = 4


@pytest.fixture
def server() -> Iterator[Any]:
    with run_in_thread(api_key=KEY, metrics=True) as handle:
        yield handle


class _RawWS:
    """A bare WebSocket client (unmasked-key frames) for input the real clients refuse to send."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            f"GET {path}?api_key={KEY} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 65536
        size = len(payload)
        length = bytes([0x80 | size]) if size < 126 else bytes([0xFE]) + size.to_bytes(2, "big")
        header = b"\x81" + length + b"\0\0\0\0"
        self.sock.sendall(header + payload)  # masked with a zero key: the payload as is

    def recv_until(self, marker: bytes) -> bytes:
        data = b""
        while marker not in data:
            chunk = self.sock.recv(65536)
            assert chunk, "closed before the marker"
            data += chunk
        return data


def _wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _turns(samples: Any, endpoint: str, outcome: str = "completed") -> float:
    return get(samples, "kugelwire_turns_total", endpoint=endpoint, outcome=outcome)


def _first_audio(samples: Any, endpoint: str) -> float:
    return get(samples, "kugelwire_first_audio_seconds_count", endpoint=endpoint)


def test_off_by_default() -> None:
    with run_in_thread() as handle:
        url = "http" + handle.url[2:] + "/metrics"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code == 404
        with urllib.request.urlopen("http" + handle.url[2:] + "/", timeout=10) as resp:
            assert resp.status == 200  # the playground is still there


def test_playground_still_served_with_metrics(server: Any) -> None:
    with urllib.request.urlopen("http" + server.url[2:] + "/", timeout=10) as resp:
        assert b"<html" in resp.read().lower()


def test_counters_move_by_exactly_the_turns_run(server: Any) -> None:
    before = scrape(server.url)
    with kw_sync.connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
        for i in range(N):
            turn = stream.send_text(f"Turn number {i}.", flush=True)
            assert turn is not None
            events = turn.collect()
            assert any(isinstance(e, TurnFinal) for e in events)
    with kw_sync.connect_tts(server.url, api_key=KEY) as tts:
        for i in range(N):
            events = tts.synthesize(f"Request {i}.", voice_id=1).collect()
            assert isinstance(events[-1], RequestFinal)
    with kw_sync.connect_multi(server.url, api_key=KEY) as multi:
        a = multi.create_context("a", voice_id=1)
        b = multi.create_context("b", voice_id=2)
        for i in range(N // 2):
            for ctx in (a, b):
                ctx.send_text(f"Cycle {i}.", flush=True)
                assert any(isinstance(e, TurnFinal) for e in ctx.until_final())
    _wait_for(lambda: get(scrape(server.url), "kugelwire_sessions", endpoint="multi") == 0)
    after = scrape(server.url)
    for endpoint in ("stream", "tts", "multi"):
        assert _turns(after, endpoint) - _turns(before, endpoint) == N, endpoint
        assert _first_audio(after, endpoint) - _first_audio(before, endpoint) == N, endpoint
        started = get(after, "kugelwire_turns_started_total", endpoint=endpoint)
        assert started - get(before, "kugelwire_turns_started_total", endpoint=endpoint) == N
        assert get(after, "kugelwire_sessions_total", endpoint=endpoint) == 1
        assert get(after, "kugelwire_audio_seconds_total", endpoint=endpoint) > 0
        assert get(after, "kugelwire_engine_real_time_factor_count", endpoint=endpoint) >= N
        assert get(after, "kugelwire_engine_seconds_total", endpoint=endpoint) > 0
        # the histogram is cumulative and ends in +Inf == count
        inf = get(after, "kugelwire_first_audio_seconds_bucket", endpoint=endpoint, le="+Inf")
        assert inf == _first_audio(after, endpoint)
    # the scrapes themselves are connections; every one is closed by now but the current one
    assert get(after, "kugelwire_connections") == 1
    assert get(after, "kugelwire_connections_total") >= 3


@pytest.fixture
def paced_server() -> Iterator[Any]:
    """A server whose engine takes a tenth of real time: a 40-sentence turn is still being
    generated (for seconds) when the test cancels it or drops its socket. With the unpaced
    tone engine a loaded machine could finish the turn first, making it ``completed``."""
    with run_in_thread(api_key=KEY, metrics=True,
                       engine=ToneEngine(realtime_factor=0.1)) as handle:
        yield handle


def test_outcomes_interrupted_disconnected_error(paced_server: Any) -> None:
    server = paced_server
    long = " ".join(f"This is sentence number {i}." for i in range(40))
    before = scrape(server.url)
    # interrupted: barge-in after the first audio
    with kw_sync.connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
        turn = stream.send_text(long, flush=True)
        assert turn is not None
        for event in turn:
            if isinstance(event, AudioChunk):
                break
        stream.cancel()
        assert isinstance(turn.collect()[-1], Interrupted)
    # disconnected: the socket goes away mid-turn (raw, no close handshake)
    raw = _RawWS(server.port, "/ws/tts/stream")
    raw.send('{"text":"' + long + '","flush":true,"voice_id":1}')
    raw.recv_until(b'"audio"')
    raw.sock.close()
    # error: a /ws/tts request of only spaces is refused with one error frame
    raw = _RawWS(server.port, "/ws/tts")
    raw.send('{"text":"   ","voice_id":1}')
    raw.recv_until(b"VALIDATION_ERROR")
    raw.sock.close()

    def settled() -> bool:
        s = scrape(server.url)
        return get(s, "kugelwire_connections") == 1 and sum(
            get(s, "kugelwire_sessions", endpoint=e) for e in ("stream", "tts", "multi")) == 0

    _wait_for(settled)
    after = scrape(server.url)
    assert _turns(after, "stream", "interrupted") - _turns(before, "stream", "interrupted") == 1
    assert _turns(after, "stream", "disconnected") - _turns(before, "stream", "disconnected") == 1
    assert _turns(after, "tts", "error") - _turns(before, "tts", "error") == 1
    errors = get(after, "kugelwire_errors_total", endpoint="tts", error_code="VALIDATION_ERROR")
    assert errors >= 1
    # every turn begun has ended, exactly once
    for endpoint in ("stream", "tts", "multi"):
        started = get(after, "kugelwire_turns_started_total", endpoint=endpoint)
        ended = sum(v for (name, labels), v in after.items()
                    if name == "kugelwire_turns_total" and ("endpoint", endpoint) in labels)
        assert started == ended, endpoint


def test_rejected_upgrades_and_no_key_in_logs(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kugelwire")
    before = scrape(server.url)
    with pytest.raises(AuthenticationError):
        kw_sync.connect_stream(server.url, api_key=KEY + "-wrong", voice_id=1)
    with kw_sync.connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
        turn = stream.send_text("Hello there.", flush=True)
        assert turn is not None
        turn.collect()
    raw = _RawWS(server.port, "/ws/tts")
    raw.send('{"text":"","voice_id":1}')
    raw.recv_until(b"VALIDATION_ERROR")
    raw.sock.close()
    _wait_for(lambda: get(scrape(server.url), "kugelwire_connections") == 1)
    after = scrape(server.url)
    key = ("kugelwire_rejected_upgrades_total", "unauthorized")
    assert get(after, key[0], status="401", reason=key[1]) - get(
        before, key[0], status="401", reason=key[1]) == 1
    records = [r for r in caplog.records if r.name.startswith("kugelwire")]
    lines = [r.getMessage() for r in records]
    assert any(line.startswith("open peer=") for line in lines)
    assert any(line.startswith("close peer=") and "endpoint=stream" in line for line in lines)
    assert any(line.startswith("rejected ") and "status=401" in line for line in lines)
    assert any(line.startswith("error ") and "endpoint=tts" in line for line in lines)
    for record in records:
        assert "SECRET" not in record.getMessage()
        assert "SECRET" not in repr(vars(record))


def test_exposition_format_and_merge() -> None:
    m = Metrics()
    m.turn_started("stream")
    m.turn_finished("stream", "completed")
    m.first_audio("stream", 0.03)
    m.error("tts", 'we"ird\\code')
    other = Metrics()
    other.turn_started("stream")
    other.turn_finished("stream", "completed")
    other.first_audio("stream", 7.0)
    other.connection_opened(0.0)
    samples = parse(m.render([other.snapshot()]).decode())
    assert get(samples, "kugelwire_turns_total", endpoint="stream", outcome="completed") == 2
    assert get(samples, "kugelwire_first_audio_seconds_count", endpoint="stream") == 2
    assert get(samples, "kugelwire_first_audio_seconds_bucket", endpoint="stream", le="0.05") == 1
    assert get(samples, "kugelwire_first_audio_seconds_bucket", endpoint="stream", le="10") == 2
    assert get(samples, "kugelwire_first_audio_seconds_sum", endpoint="stream") == 7.03
    assert get(samples, "kugelwire_connections") == 1
    weird = 'we\\"ird\\\\code'  # escaped in the exposition
    assert get(samples, "kugelwire_errors_total", endpoint="tts", error_code=weird) == 1
    # the live registry is not changed by rendering with others
    assert m.value("kugelwire_turns_total", endpoint="stream", outcome="completed") == 1


def test_observer_forwards_everything_unchanged() -> None:
    options = ServerOptions(engine=ToneEngine(), metrics=Metrics())
    session = options.new_session("/ws/tts/stream")
    assert isinstance(session, ObservedSession)
    # transparent: the session's own endpoint shows through; the metrics label is separate
    assert session.label == "stream" and session.endpoint == "/ws/tts/stream"
    assert session.wrapped.endpoint == "/ws/tts/stream"
    session.receive_message('{"text":"Hi.","flush":true,"voice_id":1}', 1.0)
    events = list(session.events())
    assert events, "the synthesis request goes through the wrapper"
    out = session.messages_to_send()
    assert out and out[0].startswith('{"generation_started"')
    assert options.new_session("/nope") is None


def test_the_documented_example(capsys: pytest.CaptureFixture[str]) -> None:
    from ..docs._blocks import blocks

    (block,) = blocks("metrics.md", "python")[:1]
    exec(compile(block.source, block.id, "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip() == "1.0"


def test_trio_server_counts_the_same() -> None:
    trio = pytest.importorskip("trio")
    from kugelwire.server import trio_serve

    registry = Metrics()

    def turns(url: str) -> None:
        with kw_sync.connect_stream(url, voice_id=1) as stream:
            for i in range(3):
                turn = stream.send_text(f"Trio turn {i}.", flush=True)
                assert turn is not None
                turn.collect()

    async def main() -> None:
        async with trio_serve(metrics=registry) as server:
            await trio.to_thread.run_sync(turns, server.url)
            with trio.fail_after(10):
                while registry.value("kugelwire_connections"):
                    await trio.sleep(0.02)

    trio.run(main)
    assert registry.value("kugelwire_turns_total", endpoint="stream", outcome="completed") == 3
    assert registry.value("kugelwire_first_audio_seconds", endpoint="stream") == 3
    assert registry.value("kugelwire_connections_total") == 1
    assert registry.value("kugelwire_sessions", endpoint="stream") == 0


def test_multi_outcomes_cancel_all_close_and_refused(server: Any) -> None:
    before = scrape(server.url)
    long = " ".join(f"Sentence {i} of a long text." for i in range(40))
    raw = _RawWS(server.port, "/ws/tts/multi")
    raw.send('{"text":"' + long + '","context_id":"a",'
             '"voice_settings":{"voice_id":1},"flush":true}')
    raw.send('{"text":"' + long + '","context_id":"b",'
             '"voice_settings":{"voice_id":2},"flush":true}')
    raw.recv_until(b'"audio"')
    raw.send('{"cancel":true}')  # every context
    raw.recv_until(b'"interrupted"')
    raw.send('{"text":"Unflushed text.","context_id":"c","voice_settings":{"voice_id":1}}')
    raw.recv_until(b'"context_created"')
    raw.send('{"close_context":true,"context_id":"c"}')
    raw.recv_until(b'"context_closed"')
    raw.send('{"text":"Cut short.","context_id":"d","voice_settings":{"voice_id":1}}')
    raw.recv_until(b'"context_id":"d"')
    raw.send('{"text":"' + long + '","context_id":"e",'
             '"voice_settings":{"voice_id":1},"flush":true}')
    raw.recv_until(b'"context_id":"e"')
    raw.send('{"close_context":true,"context_id":"e","immediate":true}')
    raw.recv_until(b'"context_closed":true,"context_id":"e"')
    raw.send('{"close_socket":true}')
    raw.recv_until(b'"session_closed"')
    raw.sock.close()
    _wait_for(lambda: get(scrape(server.url), "kugelwire_sessions", endpoint="multi") == 0)
    after = scrape(server.url)

    def delta(outcome: str) -> float:
        return _turns(after, "multi", outcome) - _turns(before, "multi", outcome)

    started = get(after, "kugelwire_turns_started_total", endpoint="multi") - get(
        before, "kugelwire_turns_started_total", endpoint="multi")
    assert delta("interrupted") == 2  # a and b, by one cancel of every context
    # c: a graceful close speaks its unflushed text; d: so does close_socket
    assert delta("completed") == 2
    assert delta("closed") == 1  # e: closed at once, mid-cycle
    assert started == 5
    assert sum(delta(o) for o in ("completed", "interrupted", "closed", "disconnected",
                                  "error")) == 5


def test_the_families_table_drives_the_exposition_and_the_docs() -> None:
    """One table names every family: the exposition lists them in its order, each with its
    type and help, and docs/metrics.md's table documents exactly those names."""
    import pathlib
    import re

    names = [row[0] for row in Metrics.FAMILIES]
    assert len(set(names)) == len(names) and all(n.startswith("kugelwire_") for n in names)
    text = Metrics().render().decode()
    helps = re.findall(r"^# HELP (\S+) (.+)$", text, re.M)
    assert [(n, h) for n, h in helps] == [(row[0], row[2]) for row in Metrics.FAMILIES]
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert types == [(row[0], row[1]) for row in Metrics.FAMILIES]
    docs = pathlib.Path(__file__).parents[2] / "docs" / "metrics.md"
    documented = re.findall(r"^\| `(kugelwire_\w+)` \| (\w+) \|", docs.read_text(), re.M)
    assert documented == [(row[0], row[1]) for row in Metrics.FAMILIES]
