"""``benchmarks/_loadgen.py``, the scale benchmark's lean client, is a correct client: the strict
server takes its handshake and masked frames, it sees each turn's audio and its end, and every
way a connection can fail is reported for that connection alone (no timing here)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from benchmarks import _loadgen
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine

from .ops._prom import get, scrape

pytestmark = pytest.mark.timeout(30)

KEY = "loadgen-key"
TOKENS = ["Hello", " there,", " one", " sentence."]


def test_lean_turns_end_with_audio_and_the_server_counts_them_completed() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY, metrics=True) as server:
        now = time.perf_counter()
        # more connections than connects at once, staggered starts
        # two rounds: each connection's second turn after its first
        starts = [[now + 0.05 * i for i in range(6)], [now + 0.4 + 0.05 * i for i in range(6)]]
        rounds = _loadgen.run("127.0.0.1", server.port, "/ws/tts/stream", KEY, TOKENS, starts,
                              lambda: 0.001, connects_at_once=2, timeout=10)
        took = time.perf_counter() - now
        assert [len(r) for r in rounds] == [6, 6]
        assert all(isinstance(t, float) and 0 < t < 5 for r in rounds for t in r), rounds
        assert took >= 0.65  # the last second-round turn started at its start
        samples = scrape(server.url)  # the server counted every turn as completed
        assert get(samples, "kugelwire_turns_total", endpoint="stream",
                   outcome="completed") == 12
        assert get(samples, "kugelwire_sessions_total", endpoint="stream") == 6  # shared by turns


def test_long_turns_whose_audio_spans_many_reads_end_with_audio() -> None:
    # ~40 s of audio per turn in 200 ms frames: payloads split across reads are counted off
    with run_in_thread(engine=ToneEngine(), api_key=KEY, limits={"frame_ms": 200}) as server:
        text = [" ".join(["sentence"] * 100) + "."]
        now = time.perf_counter()
        (out,) = _loadgen.run("127.0.0.1", server.port, "/ws/tts/stream", KEY, text, [[now] * 3],
                              lambda: 0.001, timeout=20)
        assert all(isinstance(t, float) and 0 < t < 5 for t in out), out


def test_refused_upgrades_and_connects_are_reported_per_connection() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:
        now = time.perf_counter()
        out = _loadgen.run("127.0.0.1", server.port, "/ws/tts/stream", "wrong", TOKENS,
                           [[now], [now]], lambda: 0.001, timeout=10)
        assert isinstance(out[0][0], RuntimeError), out
        assert str(out[0][0]) == "upgrade refused: HTTP/1.1 401 Unauthorized"
        assert out[1][0] is out[0][0]  # and the rounds after it
    with socket.socket() as free:  # a port with nothing listening
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ((refused,),) = _loadgen.run("127.0.0.1", port, "/ws/tts/stream", KEY, TOKENS,
                                 [[time.perf_counter()]], lambda: 0.001, timeout=10)
    assert isinstance(refused, RuntimeError) and "connect failed" in str(refused)


def test_a_peer_that_drops_or_stalls_is_reported_and_never_hangs_the_run() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:  # the first peer closes at once, the second never answers
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            if len(accepted) == 1:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        t0 = time.perf_counter()
        ((lost, stalled),) = _loadgen.run(
            "127.0.0.1", listener.getsockname()[1], "/ws/tts/stream", KEY, TOKENS, [[t0, t0]],
            lambda: 0.001, connects_at_once=1, connect_timeout=1.0, timeout=1.0)
        took = time.perf_counter() - t0
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert isinstance(lost, RuntimeError) and "connection lost" in str(lost), lost
    assert isinstance(stalled, RuntimeError) and "no connection in 1 s" in str(stalled), stalled
    assert took < 5


def test_turns_start_at_their_start_or_when_connected() -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as server:
        t0 = time.perf_counter()
        # one in the past (starts when connected), one 0.3 s ahead (waits for its start)
        (out,) = _loadgen.run("127.0.0.1", server.port, "/ws/tts/stream", KEY,
                              ["One sentence."], [[t0 - 10, t0 + 0.3]], lambda: 0.001,
                              timeout=10)
        took = time.perf_counter() - t0
        assert all(isinstance(t, float) and 0 < t < 5 for t in out), out
        assert took >= 0.3
