"""Fault injection (``kugelwire serve --fault``, ``faults=``, ``@pytest.mark.kugelwire_faults``).

Three layers: the spec parser and the pure :class:`FaultyConnection` driven with a fake clock
(exact frame counts, hold times, determinism); a raw socket client against ``kugelwire serve``
and the pytest fixture (the issue's checks, byte for byte); and kugelwire's own clients against
every fault (a typed error or a transparent replay, nothing lost, nothing duplicated).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionFailed,
    RateLimitError,
    ServerErrorResponse,
    ServerRestarting,
)
from kugelwire.protocol._events import AudioChunk, TurnClosed
from kugelwire.protocol._ws import ConnectionState
from kugelwire.server import (
    Fault,
    FaultPlan,
    FaultyConnection,
    ServerOptions,
    serve,
    trio_serve,
)
from kugelwire.server._faults import ERROR_CLOSE_CODES, FAULT_KINDS
from kugelwire.synth import ToneEngine

from ._util import run, server_frames, text_frame, upgrade_request

pytestmark = pytest.mark.timeout(40)

KEY = "inject-key"
TEXT = " ".join(["word"] * 30) + "."  # 30 words, 121 audio frames of 50 ms with piece_ms=50
DOC = Path(__file__).resolve().parents[2] / "docs" / "faults.md"


# -- the spec parser ----------------------------------------------------------------------------
def test_parse_forms() -> None:
    f = Fault.parse("restart:after=3")
    assert (f.kind, f.after, f.turn, f.conn, f.at) == ("restart", 3, 1, None, "audio")
    assert Fault.parse("drop:2").after == 2
    assert Fault.parse("drop,after=2,turn=3,conn=1") == Fault(
        "drop", after=2, turn=3, conn=1, spec="drop,after=2,turn=3,conn=1")
    r = Fault.parse("reject:429")
    assert (r.status, r.retry_after) == (429, 1.0)
    assert Fault.parse("reject:401").retry_after is None
    assert Fault.parse("reject:503,retry_after=7").retry_after == 7.0
    e = Fault.parse("error:RATE_LIMITED,retry_after=2")
    assert (e.error_code, e.retry_after, e.after) == ("RATE_LIMITED", 2.0, 0)
    assert Fault.parse("error:402").error_code == "INSUFFICIENT_CREDITS"
    assert Fault.parse("error:RATE_LIMITED,retry_after=none").retry_after is None
    d = Fault.parse("delay:ms=40,jitter=20,seed=7")
    assert (d.ms, d.jitter, d.seed) == (40.0, 20.0, 7)
    assert Fault.parse("delay:15").ms == 15.0
    assert Fault.parse("slow_handshake").ms == 1000.0
    assert Fault.parse("stall:after=1").ms is None
    assert Fault.parse("restart:at=handshake").at == "handshake"


@pytest.mark.parametrize(("spec", "message"), [
    ("explode", "unknown kind 'explode'"),
    ("drop:after=x", "after must be an integer"),
    ("drop:after=-1", "after must be >= 0"),
    ("drop:turn=0", "turn must be >= 1"),
    ("drop:speed=3", "unknown option 'speed' for drop"),
    ("drop:after=1,after=2", "after given twice"),
    ("drop:after=1,2", "'2' must be key=value"),
    ("reject:200", "status must be a 4xx or 5xx"),
    ("error:OOPS", "unknown error 'OOPS'"),
    ("delay", "delay needs ms"),
    ("delay:ms=nan", "ms must be >= 0"),
    ("restart:at=later", "at must be 'audio' or 'handshake' or 'turn_end'"),
    ("error:at=turn_end", "at must be 'audio' or 'handshake', not"),
    ("drop:,", "empty option"),
])
def test_parse_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Fault.parse(spec)


def test_plan_describes_each_fault_and_what_it_rehearses() -> None:
    plan = FaultPlan.parse(["restart:after=3", "reject:429", "delay:ms=5,jitter=2,seed=1"])
    lines = plan.describe()
    assert lines[0].startswith("restart:after=3: close 1012 after 3 audio frame(s) of turn 1")
    assert "rolling deploy" in lines[0]
    assert "HTTP 429 with Retry-After 1" in lines[1]
    assert "0..2 ms jitter (seed 1)" in lines[2]
    assert FaultPlan.parse(None).faults == () and not FaultPlan.parse([])


def test_the_docs_table_lists_every_kind_and_its_examples_parse() -> None:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("| Kind | Example | What the server does | Rehearses |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    kinds = {}
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        kinds[cells[0].strip("`")] = cells
    assert set(FAULT_KINDS) <= set(kinds)
    for kind in FAULT_KINDS:
        examples = re.findall(r"`([^`]+)`", kinds[kind][1])
        assert examples, kind
        for example in examples:
            assert Fault.parse(example).kind == kind
    for code, (status, close, _) in ERROR_CLOSE_CODES.items():
        assert f"| `{code}` | {status} |" in DOC.read_text(encoding="utf-8")
        assert f"| {close} |" in DOC.read_text(encoding="utf-8")


# -- the pure connection, with a fake clock -----------------------------------------------------
class Pure:
    """A FaultyConnection routed to a real stream session; the "engine" is the test."""

    def __init__(self, *specs: str, plan: FaultPlan | None = None, path: str = "/ws/tts/stream"):
        self.options = ServerOptions(engine=ToneEngine())
        self.plan = plan or FaultPlan.parse(list(specs))
        self.now = 0.0
        self.conn = FaultyConnection(self.options.new_session, faults=self.plan, now=0.0,
                                     request_id="req_pure")
        self.conn.receive_data(upgrade_request(path), 0.0)
        self.head, _, rest = self.conn.data_to_send().partition(b"\r\n\r\n")
        self.buf = rest
        self.session: Any = None
        for event in self.conn.events():
            self.session = getattr(event, "session", self.session)

    def send(self, obj: dict[str, Any]) -> None:
        self.conn.receive_data(text_frame(obj), self.now)

    def speak(self, frames: int, samples: int = 1200) -> None:
        """Answer the session's synthesis request with ``frames`` audio pieces."""
        for ev in list(self.session.events()):
            for _ in range(frames):
                self.session.send_audio(ev.ref, b"\x01\x00" * samples, self.now)
            self.session.complete_chunk(ev.ref, 1.0, self.now)

    def at(self, now: float) -> list[Any]:
        self.now = now
        deadline = self.conn.next_deadline()
        if deadline is not None and deadline <= now:
            self.conn.handle_timeout(now)
        return self.read()

    def read(self) -> list[Any]:
        frames, self.buf = server_frames(self.buf + self.conn.data_to_send())
        out: list[Any] = []
        for opcode, payload in frames:
            if opcode == 0x1:
                out.append(json.loads(payload))
            elif opcode == 0x8:
                out.append(("close", int.from_bytes(payload[:2], "big")))
        return out


def _kinds(frames: list[Any]) -> list[str]:
    return [f[0] if isinstance(f, tuple) else next(iter(f)) for f in frames]


def test_restart_after_3_closes_1012_after_exactly_3_audio_frames() -> None:
    p = Pure("restart:after=3")
    p.send({"voice_id": 1, "text": "Hello there.", "flush": True})
    p.speak(10)
    out = p.read()
    assert _kinds(out) == ["generation_started", "audio", "audio", "audio", "close"]
    assert out[-1] == ("close", 1012)
    assert p.conn.state is ConnectionState.CLOSING


def test_drop_requests_an_abort_after_n_frames_of_the_nth_turn() -> None:
    p = Pure("drop:after=2,turn=2")
    p.send({"voice_id": 1, "text": "One.", "flush": True})
    p.speak(4)
    first = p.read()
    assert _kinds(first).count("audio") == 4 and "session_closed" in _kinds(first)
    assert not p.conn.abort_requested
    p.send({"text": "Two.", "flush": True})
    p.speak(4)
    second = p.read()
    assert _kinds(second) == ["generation_started", "audio", "audio"]
    assert p.conn.abort_requested


def test_error_frame_then_matching_close_code() -> None:
    p = Pure("error:INSUFFICIENT_CREDITS,after=1")
    p.send({"voice_id": 1, "text": "Hello.", "flush": True})
    p.speak(3)
    out = p.read()
    assert _kinds(out) == ["generation_started", "audio", "error", "close"]
    assert out[2] == {"error": "Insufficient credits", "error_code": "INSUFFICIENT_CREDITS",
                      "code": 402, "request_id": "req_pure"}
    assert out[3] == ("close", 4003)


def test_error_after_0_replaces_the_first_audio_frame() -> None:
    p = Pure("error:RATE_LIMITED,retry_after=2")
    p.send({"voice_id": 1, "text": "Hello.", "flush": True})
    p.speak(3)
    out = p.read()
    assert _kinds(out) == ["generation_started", "error", "close"]
    assert out[1]["retry_after"] == 2 and out[1]["code"] == 429
    assert out[2] == ("close", 4029)


def test_restart_at_turn_end_closes_right_after_session_closed() -> None:
    p = Pure("restart:at=turn_end,turn=2")
    for number in (1, 2):
        p.send({"voice_id": 1, "text": f"Turn {number}.", "flush": True})
        p.speak(2)
        out = p.read()
        expected = ["generation_started", "audio", "audio", "chunk_complete", "final",
                    "session_closed"]
        assert _kinds(out) == expected + (["close"] if number == 2 else [])
    assert out[-1] == ("close", 1012)
    tts = Pure("restart:at=turn_end", path="/ws/tts")
    tts.send({"voice_id": 1, "text": "Request."})
    tts.speak(1)
    assert _kinds(tts.read()) == ["audio", "final", "close"]


def test_error_and_restart_at_handshake() -> None:
    p = Pure("error:MODEL_UNAVAILABLE,at=handshake")
    assert p.head.startswith(b"HTTP/1.1 101")
    assert _kinds(p.read()) == ["error", "close"]
    q = Pure("restart:at=handshake")
    assert q.read() == [("close", 1013)]


def test_stall_holds_then_resumes_without_loss() -> None:
    p = Pure("stall:after=1,ms=500")
    p.send({"voice_id": 1, "text": "Hello.", "flush": True})
    p.speak(5)
    assert _kinds(p.read()) == ["generation_started", "audio"]
    assert p.conn.next_deadline() == pytest.approx(0.5)
    assert p.at(0.499) == []
    rest = p.at(0.5)
    assert _kinds(rest) == ["audio"] * 4 + ["chunk_complete", "final", "session_closed"]
    assert p.conn.state is ConnectionState.OPEN


def test_stall_for_ever_keeps_the_socket_open_and_answers_pings() -> None:
    p = Pure("stall:after=0")
    p.send({"voice_id": 1, "text": "Hello.", "flush": True})
    p.speak(2)
    assert _kinds(p.read()) == ["generation_started"]
    assert p.at(3600.0) == []
    p.conn.receive_data(bytes([0x89, 0x80, 0, 0, 0, 0]), 3600.0)  # a ping
    frames, _ = server_frames(p.conn.data_to_send())
    assert frames == [(0xA, b"")]
    assert p.conn.state is ConnectionState.OPEN


def _delay_schedule(seed: int, conn_number: int = 1) -> list[float]:
    plan = FaultPlan.parse(f"delay:ms=10,jitter=5,seed={seed}")
    plan.connections = conn_number - 1
    p = Pure(plan=plan)
    p.send({"voice_id": 1, "text": "Hello.", "flush": True})
    p.speak(6)
    times: list[float] = []
    t = 0.0
    while len(times) < 10:  # generation_started, 6 audio, chunk_complete, final, closed
        deadline = p.conn.next_deadline()
        assert deadline is not None and deadline > t
        t = deadline
        times += [t] * len(p.at(t))
    return times


def test_delay_spaces_every_frame_and_is_deterministic() -> None:
    a = _delay_schedule(seed=3)
    assert a == _delay_schedule(seed=3)  # the same plan misbehaves the same way
    assert a != _delay_schedule(seed=4)
    assert a != _delay_schedule(seed=3, conn_number=2)  # each connection has its own stream
    gaps = [b - a_ for a_, b in zip([0.0, *a[:-1]], a, strict=True)]
    assert all(0.010 - 1e-9 <= g <= 0.015 + 1e-9 for g in gaps), gaps


def test_slow_handshake_holds_the_101() -> None:
    plan = FaultPlan.parse("slow_handshake:ms=250")
    conn = FaultyConnection(ServerOptions(engine=ToneEngine()).new_session, faults=plan, now=0.0)
    conn.receive_data(upgrade_request("/ws/tts/stream"), 1.0)
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CONNECTING
    assert conn.next_deadline() == pytest.approx(1.25)
    conn.handle_timeout(1.25)
    assert conn.data_to_send().startswith(b"HTTP/1.1 101")
    assert conn.state is ConnectionState.OPEN


def test_conn_option_picks_one_connection() -> None:
    plan = FaultPlan.parse("restart:after=1,conn=2")
    first, second, third = (Pure(plan=plan) for _ in range(3))
    for p, expect_close in ((first, False), (second, True), (third, False)):
        p.send({"voice_id": 1, "text": "Hi.", "flush": True})
        p.speak(2)
        assert (("close", 1012) in p.read()) is expect_close


def test_reject_rewrites_only_upgrades() -> None:
    plan = FaultPlan.parse("reject:429")
    options = ServerOptions(engine=ToneEngine())
    conn = FaultyConnection(options.new_session, faults=plan, now=0.0, request_id="req_r")
    conn.receive_data(upgrade_request("/ws/tts/stream"), 0.0)
    head, _, body = conn.data_to_send().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 ")
    assert b"\r\nretry-after: 1" in head and b"\r\nx-request-id: req_r" in head
    assert json.loads(body) == {"error": "Rate limit exceeded", "error_code": "RATE_LIMITED",
                                "code": 429}
    assert conn.state is ConnectionState.CLOSED
    rest = FaultyConnection(options.new_session, faults=plan, now=0.0,
                            rest_handler=options.rest_handler())
    rest.receive_data(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert rest.data_to_send().startswith(b"HTTP/1.1 200 ")  # REST is not an upgrade
    assert plan.connections == 1


# -- a raw client against `kugelwire serve --fault ...` -----------------------------------------
@pytest.fixture
def cli_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """``kugelwire serve --engine tone --port 0 --fault SPEC...``: yields (port, stdout head)."""
    specs: list[str] = request.param
    args = [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port", "0",
            "--api-key", KEY]
    for spec in specs:
        args += ["--fault", spec]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3 + len(specs))]
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
        yield port, "".join(lines)
    finally:
        proc.terminate()
        proc.wait(10)


def _raw_turn(port: int, key: str = KEY) -> tuple[bytes, list[Any], str]:
    """Upgrade, send one long turn, read until close/reset/quiet: (head, frames, how it ended)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request("/ws/tts/stream", key=key))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, [], "eof"
        data += chunk
    head, _, buf = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        return head + b"\r\n\r\n" + buf, [], "http"
    sock.sendall(text_frame({"voice_id": 1, "text": TEXT, "flush": True}))
    out: list[Any] = []
    how = "quiet"
    sock.settimeout(3)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                how = "eof"
                break
            frames, buf = server_frames(buf + chunk)
            for opcode, payload in frames:
                out.append(json.loads(payload) if opcode == 0x1 else ("op", opcode, payload))
            if any(isinstance(f, dict) and f.get("session_closed") for f in out):
                how = "done"
                break
    except ConnectionResetError:
        how = "reset"
    except TimeoutError:
        how = "quiet"
    finally:
        sock.close()
    return head, out, how


def _audio(frames: list[Any]) -> int:
    return sum(1 for f in frames if isinstance(f, dict) and "audio" in f)


@pytest.mark.parametrize("cli_server", [["restart:after=3"]], indirect=True)
def test_cli_restart_after_3(cli_server: tuple[int, str]) -> None:
    port, banner = cli_server
    assert "FAULT INJECTION ACTIVE" in banner and "close 1012 after 3 audio frame(s)" in banner
    for _ in range(2):  # every connection
        _, frames, how = _raw_turn(port)
        assert _audio(frames) == 3
        assert frames[-1] == ("op", 0x8, (1012).to_bytes(2, "big"))
        assert how in ("eof", "quiet")


@pytest.mark.parametrize("cli_server", [["reject:429"]], indirect=True)
def test_cli_reject_429(cli_server: tuple[int, str]) -> None:
    port, _ = cli_server
    for _ in range(2):
        head, _, how = _raw_turn(port)
        assert how == "http" and head.startswith(b"HTTP/1.1 429 ")
        assert re.search(rb"\r\nretry-after: \d+\r\n", head.lower())
        assert re.search(rb"\r\nx-request-id: req_[0-9a-f]+\r\n", head.lower())


@pytest.mark.parametrize("cli_server", [["drop:after=2"]], indirect=True)
def test_cli_drop_after_2(cli_server: tuple[int, str]) -> None:
    port, _ = cli_server
    head, frames, how = _raw_turn(port)
    assert head.startswith(b"HTTP/1.1 101")
    assert how == "reset"
    assert _audio(frames) == 2
    assert not any(isinstance(f, tuple) for f in frames)  # no close frame: a TCP reset


def test_cli_bad_fault_is_one_clear_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port", "0",
         "--fault", "explode:now"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "kugelwire: fault 'explode:now': unknown kind 'explode' (one of drop, restart, stall, "
        "delay, error, reject, slow_handshake)"]


# -- the same plans through the pytest marker ---------------------------------------------------
@pytest.mark.kugelwire_faults("restart:after=3")
def test_marker_restart(kugelwire_server: Any) -> None:
    assert kugelwire_server.faults == FaultPlan.parse("restart:after=3")
    _, frames, _ = _raw_turn(kugelwire_server.port, kugelwire_server.api_key)
    assert _audio(frames) == 3 and frames[-1] == ("op", 0x8, (1012).to_bytes(2, "big"))


@pytest.mark.kugelwire_faults("reject:429")
def test_marker_reject(kugelwire_server: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", kugelwire_server.port), timeout=5)
    sock.sendall(upgrade_request("/ws/tts/stream", key=kugelwire_server.api_key))
    head = sock.recv(65536)
    sock.close()
    assert head.startswith(b"HTTP/1.1 429 ") and b"retry-after: 1\r\n" in head


@pytest.mark.kugelwire_faults("drop:after=2")
def test_marker_drop(kugelwire_server: Any) -> None:
    _, frames, how = _raw_turn(kugelwire_server.port, kugelwire_server.api_key)
    assert how == "reset" and _audio(frames) == 2


@pytest.mark.kugelwire_lenient
def test_marker_lenient(kugelwire_server: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", kugelwire_server.port), timeout=5)
    sock.sendall(upgrade_request("/ws/tts/stream", key=kugelwire_server.api_key))
    sock.recv(65536)
    sock.sendall(text_frame({"text": "No voice.", "flush": True}))  # refused when strict
    sock.settimeout(5)
    data = b""
    while b"session_closed" not in data:
        data += sock.recv(65536)
    sock.close()
    assert b'"audio"' in data and b'"error"' not in data


def test_playground_shows_active_faults() -> None:
    async def main() -> None:
        async with serve(api_key=KEY, faults=["restart:after=3", "delay:ms=5"]) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            page = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert b"Fault injection active" in page
            assert b"<code>restart:after=3</code>: close 1012 after 3 audio frame(s)" in page
            assert b"<code>delay:ms=5</code>" in page
        async with serve(api_key=KEY) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            page = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert b"Fault injection active" not in page

    run(main)


# -- kugelwire's own clients against every fault -------------------------------------------------
async def _healthy_samples() -> int:
    from kugelwire.transports.asyncio import connect_stream

    async with serve(engine=ToneEngine(piece_ms=50), api_key=KEY) as server, \
            await connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
        turn = await stream.send_text(TEXT, flush=True)
        assert turn is not None
        return sum(e.samples for e in await turn.collect() if isinstance(e, AudioChunk))


async def _turn_against(spec: str, **connect: Any) -> dict[str, Any]:
    """One long turn, then a short one, against a server with ``spec``; what the client saw."""
    from kugelwire.transports.asyncio import connect_stream

    seen: dict[str, Any] = {"chunks": [], "error": None, "next": None}
    async with serve(engine=ToneEngine(piece_ms=50), api_key=KEY, faults=spec) as server:
        seen["server"] = server
        stream = await connect_stream(server.url, api_key=KEY, voice_id=1, restart_delay=0.05,
                                      **connect)
        async with stream:
            turn = await stream.send_text(TEXT, flush=True)
            assert turn is not None
            try:
                async for event in turn:
                    if isinstance(event, AudioChunk):
                        seen["chunks"].append(event)
            except Exception as exc:
                seen["error"] = exc
            seen["restarts"] = stream.restarts
            try:
                nxt = await stream.send_text("Next turn.", flush=True)
                assert nxt is not None
                seen["next"] = (await asyncio.wait_for(nxt.collect(), 5))[-1]
            except Exception as exc:
                seen["next"] = exc
    return seen


def _samples(seen: dict[str, Any]) -> int:
    return sum(c.samples for c in seen["chunks"])


def _indices_ok(seen: dict[str, Any]) -> bool:
    """Nothing duplicated: frame indices strictly increase (one turn, one pass)."""
    idx = [c.idx for c in seen["chunks"]]
    return idx == list(range(len(idx)))


def test_client_drop_gets_typed_error_with_unspoken_text_and_no_duplicates() -> None:
    async def main() -> None:
        seen = await _turn_against("drop:after=2")
        err = seen["error"]
        assert isinstance(err, ConnectionClosedError) and not isinstance(err, ServerRestarting)
        assert err.code is None and err.unspoken_text == TEXT
        assert len(seen["chunks"]) == 2 and _indices_ok(seen)
        assert isinstance(seen["next"], ConnectionClosedError)

    run(main, timeout=30)


def test_client_restart_before_audio_replays_the_whole_turn() -> None:
    async def main() -> None:
        full = await _healthy_samples()
        for spec in ("restart:after=0,conn=1", "restart:at=handshake,conn=1"):
            seen = await _turn_against(spec)
            assert seen["error"] is None, (spec, seen["error"])
            assert seen["restarts"] == 1
            assert _samples(seen) == full and _indices_ok(seen)  # nothing lost or doubled
            assert isinstance(seen["next"], TurnClosed)

    run(main, timeout=30)


def test_client_restart_at_turn_end_is_invisible() -> None:
    async def main() -> None:
        seen = await _turn_against("restart:at=turn_end")
        assert seen["error"] is None and len(seen["chunks"]) > 3 and _indices_ok(seen)
        assert isinstance(seen["next"], TurnClosed)  # reconnected for the next turn

    run(main, timeout=30)


def test_client_restart_after_audio_reports_unspoken_text_then_reconnects() -> None:
    async def main() -> None:
        seen = await _turn_against("restart:after=3,conn=1")
        err = seen["error"]
        assert isinstance(err, ServerRestarting) and err.code == 1012
        assert len(seen["chunks"]) == 3 and _indices_ok(seen)
        assert err.unspoken_text == TEXT  # one chunk (one sentence): not provably spoken
        assert isinstance(seen["next"], TurnClosed)  # the stream reconnected

    run(main, timeout=30)


def test_client_stall_times_out_then_resumes_without_loss() -> None:
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        async with serve(engine=ToneEngine(piece_ms=50), api_key=KEY,
                         faults="stall:after=1") as server, \
                await connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
            turn = await stream.send_text(TEXT, flush=True)
            assert turn is not None
            it = turn.__aiter__()
            got = []
            with pytest.raises(asyncio.TimeoutError):
                while True:
                    got.append(await asyncio.wait_for(it.__anext__(), 0.5))
            assert sum(isinstance(e, AudioChunk) for e in got) == 1
            assert server.connections == 1  # the socket stays open

        full = await _healthy_samples()
        seen = await _turn_against("stall:after=2,ms=300")
        assert seen["error"] is None and _samples(seen) == full and _indices_ok(seen)

    run(main, timeout=30)


def test_client_delay_delivers_the_same_audio_later() -> None:
    async def main() -> None:
        full = await _healthy_samples()
        t0 = time.monotonic()
        seen = await _turn_against("delay:ms=4,jitter=2,seed=5")
        elapsed = time.monotonic() - t0
        assert seen["error"] is None and _samples(seen) == full and _indices_ok(seen)
        assert elapsed >= len(seen["chunks"]) * 0.004
        assert isinstance(seen["next"], TurnClosed)

    run(main, timeout=30)


def test_client_error_frames_are_typed() -> None:
    async def main() -> None:
        seen = await _turn_against("error:RATE_LIMITED,retry_after=2")
        err = seen["error"]
        assert isinstance(err, RateLimitError) and err.retry_after == 2.0
        assert seen["chunks"] == []
        assert isinstance(seen["next"], RateLimitError)  # the connection is gone (4029)

        seen = await _turn_against("error:INSUFFICIENT_CREDITS,after=1")
        err = seen["error"]
        assert isinstance(err, ServerErrorResponse)
        assert err.code.value == "INSUFFICIENT_CREDITS" and err.status == 402
        assert len(seen["chunks"]) == 1
        assert isinstance(seen["next"], (ServerErrorResponse, ConnectionClosedError))

    run(main, timeout=30)


def test_client_rejected_upgrades_are_typed() -> None:
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        for spec, exc_type in (("reject:401", AuthenticationError),
                               ("reject:429", RateLimitError),
                               ("reject:503", ServerRestarting)):
            async with serve(api_key=KEY, faults=spec) as server:
                with pytest.raises(exc_type) as info:
                    await connect_stream(server.url, api_key=KEY, voice_id=1)
                if exc_type is RateLimitError:
                    assert info.value.retry_after == 1.0  # type: ignore[attr-defined]

    run(main, timeout=30)


def test_client_slow_handshake_waits_or_times_out() -> None:
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        async with serve(api_key=KEY, faults="slow_handshake:ms=300") as server:
            t0 = time.monotonic()
            async with await connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
                assert time.monotonic() - t0 >= 0.3
                turn = await stream.send_text("Hello.", flush=True)
                assert turn is not None
                assert isinstance((await turn.collect())[-1], TurnClosed)
            with pytest.raises(ConnectionFailed):
                await connect_stream(server.url, api_key=KEY, voice_id=1, connect_timeout=0.1)

    run(main, timeout=30)


def test_sync_client_against_drop_and_restart() -> None:
    from kugelwire.server import run_in_thread
    from kugelwire.transports.sync import connect_stream

    faults = ["restart:after=0,conn=1", "drop:after=2,conn=2,turn=2"]
    with run_in_thread(engine=ToneEngine(piece_ms=50), api_key=KEY, faults=faults) as h, \
            connect_stream(h.url, api_key=KEY, voice_id=1, restart_delay=0.05) as stream:
        first = stream.send_text("Replayed once.", flush=True)
        assert first is not None
        events = first.collect()
        assert isinstance(events[-1], TurnClosed) and stream.restarts == 1
        second = stream.send_text(TEXT, flush=True)  # turn 2 on connection 2: dropped
        assert second is not None
        with pytest.raises(ConnectionClosedError) as info:
            second.collect()
        assert info.value.code is None and info.value.unspoken_text == TEXT


def test_trio_runner_obeys_drop_and_restart() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with trio_serve(engine=ToneEngine(piece_ms=50), api_key=KEY,
                              faults=["restart:after=3,conn=1", "drop:after=2,conn=2"]) as srv:
            port = srv.port
            for expect in ("restart", "drop"):
                _, frames, how = await trio.to_thread.run_sync(_raw_turn, port)
                if expect == "restart":
                    assert _audio(frames) == 3
                    assert frames[-1] == ("op", 0x8, (1012).to_bytes(2, "big"))
                else:
                    assert how == "reset" and _audio(frames) == 2

    trio.run(main)



# -- a property: the fault fires at exactly the frame it names, whatever the turns look like --

@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["drop", "restart", "error:INTERNAL_ERROR", "stall"]),
    after=st.integers(0, 5),
    turn=st.integers(1, 3),
    frames=st.lists(st.integers(1, 6), min_size=1, max_size=3),
)
def test_fault_fires_exactly_at_frame_after_of_turn(
    kind: str, after: int, turn: int, frames: list[int]
) -> None:
    sep = "," if ":" in kind else ":"
    p = Pure(f"{kind}{sep}after={after},turn={turn}")
    seen: list[int] = []  # audio frames delivered per turn
    stopped = False
    for number, n in enumerate(frames, start=1):
        p.send({"voice_id": 1, "text": f"Turn {number}.", "flush": True})
        p.speak(n)
        out = p.read()
        seen.append(_kinds(out).count("audio"))
        fired = number == turn and after <= n
        if fired:
            assert seen[-1] == after
            if kind == "drop":
                assert p.conn.abort_requested
            elif kind == "stall":
                assert p.conn.state is ConnectionState.OPEN
                assert "session_closed" not in _kinds(out)
            else:
                code = 1012 if kind == "restart" else 4000
                assert out[-1] == ("close", code)
            stopped = True
            break
        assert seen[-1] == n and not p.conn.abort_requested
        assert _kinds(out)[-1] == "session_closed"
    assert stopped == (turn <= len(frames) and after <= frames[turn - 1])


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 400), max_size=12), after=st.integers(1, 4))
def test_random_network_splits_do_not_change_what_a_fault_does(cuts: list[int], after: int) -> None:
    """The request and its frames arrive cut at random points: same frames, same close."""
    wire = upgrade_request("/ws/tts/stream") + text_frame(
        {"voice_id": 1, "text": "Split me up.", "flush": True})

    def run_with(pieces: list[bytes]) -> list[Any]:
        plan = FaultPlan.parse(f"restart:after={after}")
        conn = FaultyConnection(ServerOptions(engine=ToneEngine()).new_session, faults=plan,
                                now=0.0, request_id="req_split")
        out = b""
        session: Any = None
        for piece in pieces:
            conn.receive_data(piece, 0.0)
            out += conn.data_to_send()
            for event in conn.events():
                session = getattr(event, "session", session)
        assert session is not None
        for ev in list(session.events()):
            for _ in range(6):
                session.send_audio(ev.ref, b"\x01\x00" * 1200, 0.0)
        out += conn.data_to_send()
        frames, rest = server_frames(out.partition(b"\r\n\r\n")[2])
        assert rest == b""
        return frames

    bounds = sorted({c for c in cuts if c < len(wire)})
    pieces = [wire[a:b] for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True)]
    frames = run_with(pieces)
    assert frames == run_with([wire])
    assert [op for op, _ in frames].count(0x1) == 1 + after  # generation_started + N audio
    assert frames[-1] == (0x8, (1012).to_bytes(2, "big"))
