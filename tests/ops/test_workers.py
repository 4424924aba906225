"""``kugelwire serve --workers N``: processes, load, restarts, graceful drain, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kugelwire.protocol._client import StreamClientSession
from kugelwire.protocol._events import AudioChunk, TurnClosed, TurnFinal
from kugelwire.transports import asyncio as kw_asyncio
from kugelwire.transports import sync as kw_sync

from ..server._client import RawClient
from ._prom import get, scrape
from ._supervisor import KEY, Supervisor

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]

SHUTDOWN_TIMEOUT = 10.0  # serve's default shutdown_timeout


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor("--workers", "2", "--metrics")
    try:
        yield sup
    finally:
        sup.stop()


async def _turn(url: str, i: int) -> int:
    async with await kw_asyncio.connect_stream(url, api_key=KEY, voice_id=1 + i % 2) as stream:
        turn = await stream.send_text(f"Hello number {i}. ", flush=True)
        assert turn is not None
        events = await turn.collect()
        assert isinstance(events[-1], TurnClosed), events[-1]
        assert any(isinstance(e, TurnFinal) for e in events)
        return sum(1 for e in events if isinstance(e, AudioChunk))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to list the workers")
def test_two_workers_400_concurrent_turns(supervisor: Supervisor) -> None:
    assert supervisor.children() == sorted(supervisor.pids)
    assert len(supervisor.pids) == 2

    async def main() -> list[int | BaseException]:
        return await asyncio.wait_for(
            asyncio.gather(*(_turn(supervisor.url, i) for i in range(400)),
                           return_exceptions=True), 120)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(isinstance(r, int) and r > 0 for r in results)
    # metrics: aggregated over both workers (the others' share is published every second)
    time.sleep(1.5)
    for _ in range(4):  # whichever worker answers the scrape, the totals are the same
        samples = scrape(supervisor.url)
        assert get(samples, "kugelwire_turns_total", endpoint="stream",
                   outcome="completed") == 400
        assert get(samples, "kugelwire_first_audio_seconds_count", endpoint="stream") == 400
        assert get(samples, "kugelwire_sessions_total", endpoint="stream") == 400


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to list the workers")
def test_a_killed_worker_is_restarted(supervisor: Supervisor) -> None:
    victim = supervisor.pids[0]
    mark = len(supervisor.lines)
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for(r"worker 0 \(pid \d+\) exited with -9; restarting", start=mark)
    supervisor.wait_for(r"worker 0 pid \d+ ready", start=mark)
    children = supervisor.children()
    assert len(children) == 2 and victim not in children and supervisor.pids[1] in children
    assert all(n > 0 for n in asyncio.run(_many(supervisor.url, 20)))


async def _many(url: str, n: int) -> list[int]:
    return list(await asyncio.gather(*(_turn(url, i) for i in range(n))))


def test_sigterm_drains_and_exits_0(supervisor: Supervisor) -> None:
    with kw_sync.connect_stream(supervisor.url, api_key=KEY, voice_id=1) as stream:
        turn = stream.send_text("A busy turn, still open when the signal comes. ")
        assert turn is not None
        time.sleep(0.3)
        t0 = time.monotonic()
        supervisor.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert supervisor.proc.poll() is None  # the busy turn holds its worker
        stream.flush()
        events = turn.collect()  # the turn finishes with all its audio, then 1012
        assert any(isinstance(e, TurnFinal) for e in events)
        assert isinstance(events[-1], TurnClosed)
    code = supervisor.proc.wait(SHUTDOWN_TIMEOUT + 5)
    elapsed = time.monotonic() - t0
    assert code == 0, supervisor.lines
    assert elapsed < SHUTDOWN_TIMEOUT, elapsed
    assert supervisor.wait_for("all workers stopped")
    assert not supervisor.children()


def test_sigterm_on_an_idle_supervisor_is_quick() -> None:
    sup = Supervisor("--workers", "2")
    try:
        t0 = time.monotonic()
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(SHUTDOWN_TIMEOUT + 5) == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        sup.stop()


def test_workers_must_be_positive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kugelwire", "serve", "--workers", "0", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "--workers must be at least 1" in proc.stderr


def test_worker_entry_refuses_to_run_alone() -> None:
    proc = subprocess.run([sys.executable, "-m", "kugelwire.server._workers"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "KUGELWIRE_WORKER"})
    assert proc.returncode == 2 and "--workers N" in proc.stderr




def test_shared_socket_fallback_without_reuseport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the OS has no SO_REUSEPORT the workers inherit one listening socket."""
    from kugelwire.server import _workers

    monkeypatch.setattr(_workers, "_HAS_REUSEPORT", False)

    async def main() -> int:
        stop = asyncio.Event()
        seen: dict[str, Any] = {}
        ready = asyncio.Event()

        def on_ready(url: str, pids: list[int]) -> None:
            seen.update(url=url, pids=pids)
            ready.set()

        task = asyncio.create_task(_workers.supervise(
            2, "127.0.0.1", 0, engine="tone", metrics=True, api_key=KEY, ready=on_ready,
            stop=stop))
        await asyncio.wait_for(ready.wait(), 60)
        assert len(seen["pids"]) == 2
        counts = await asyncio.wait_for(_many(seen["url"], 40), 60)
        assert all(n > 0 for n in counts)
        await asyncio.sleep(1.5)
        samples = await asyncio.to_thread(scrape, seen["url"])
        assert get(samples, "kugelwire_turns_total", endpoint="stream", outcome="completed") == 40
        stop.set()
        return await asyncio.wait_for(task, SHUTDOWN_TIMEOUT + 10)

    assert asyncio.run(main()) == 0


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting for a reaper that may never come, counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_the_supervisor_is_killed() -> None:
    sup = Supervisor("--workers", "2")
    try:
        os.kill(sup.proc.pid, signal.SIGKILL)
        sup.proc.wait(10)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT + 5
        while any(_alive(pid) for pid in sup.pids):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            time.sleep(0.1)
    finally:
        for pid in sup.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        sup.stop()


# -- every backend ------------------------------------------------------------------------------
BACKENDS = ("asyncio", "trio", "anyio", "sync")


async def _drain_on_sigterm(sup: Supervisor) -> None:
    """SIGTERM with idle connections and one busy turn open: the idle ones close with 1012 at
    once, the busy turn finishes with its audio and then closes with 1012."""
    idle = [await RawClient(StreamClientSession(voice_id=1), sup.url, api_key=KEY).connect()
            for _ in range(4)]
    busy_s = StreamClientSession(voice_id=1)
    busy = await RawClient(busy_s, sup.url, api_key=KEY).connect()
    assert all(c.connected for c in [*idle, busy])
    busy_s.send_text("A busy turn, still open when the signal comes. ", busy.now)
    busy.flush()
    await asyncio.sleep(0.3)
    sup.proc.send_signal(signal.SIGTERM)
    for client in idle:
        assert (await client.until_closed()).code == 1012
    assert sup.proc.poll() is None  # the busy turn holds its worker
    busy_s.flush(busy.now)
    busy.flush()
    closed = await busy.until_closed()
    assert busy.of(TurnFinal) and busy.of(TurnClosed) and busy.of(AudioChunk)
    assert closed.code == 1012
    for client in [*idle, busy]:
        await client.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_serves_counts_and_drains(backend: str) -> None:
    """``serve --workers 2 --backend B``: two workers, concurrent turns with no error, metrics
    aggregated over both counting exactly the turns run, SIGTERM drains (1012) and exits 0."""
    sup = Supervisor("--workers", "2", "--metrics", "--backend", backend)
    try:
        assert len(sup.pids) == 2
        if Path("/proc").is_dir():
            assert sup.children() == sorted(sup.pids)
        counts = asyncio.run(asyncio.wait_for(_many(sup.url, 40), 60))
        assert all(n > 0 for n in counts)
        time.sleep(1.5)  # each worker publishes its share every second
        for _ in range(3):  # whichever worker answers the scrape, the totals are the same
            samples = scrape(sup.url)
            assert get(samples, "kugelwire_turns_total", endpoint="stream",
                       outcome="completed") == 40
            assert get(samples, "kugelwire_turns_started_total", endpoint="stream") == 40
            assert get(samples, "kugelwire_first_audio_seconds_count", endpoint="stream") == 40
        t0 = time.monotonic()
        asyncio.run(asyncio.wait_for(_drain_on_sigterm(sup), 30))
        assert sup.proc.wait(SHUTDOWN_TIMEOUT + 5) == 0, sup.lines
        assert time.monotonic() - t0 < SHUTDOWN_TIMEOUT
        assert sup.wait_for("all workers stopped")
    finally:
        sup.stop()


# -- the server options reach every worker ------------------------------------------------------
async def _no_voice_turn(url: str, key: str) -> int:
    async with await kw_asyncio.connect_stream(url, api_key=key) as stream:
        turn = await stream.send_text("No voice was chosen. ", flush=True)
        assert turn is not None
        events = await turn.collect()
        assert any(isinstance(e, TurnFinal) for e in events), events
        return sum(1 for e in events if isinstance(e, AudioChunk))


async def _bad_key_closes_4001(url: str) -> None:
    client = await RawClient(StreamClientSession(voice_id=1), url, api_key="sk-wrong").connect()
    assert client.connected  # --auth-failure close: accepted, then closed
    assert (await client.until_closed()).code == 4001
    await client.aclose()


def test_serve_options_reach_every_worker(tmp_path: Path) -> None:
    """``--api-key-file``, ``--lenient`` and a generated flag (``--auth-failure``) apply in the
    workers exactly as in one process."""
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-from-the-file\n", encoding="utf-8")
    sup = Supervisor("--workers", "2", "--lenient", "--api-key-file", str(keyfile),
                     "--auth-failure", "close", "--no-lint", key=None)
    try:
        async def main() -> None:
            # 16 connections: the kernel spreads them over both workers
            counts = await asyncio.gather(
                *(_no_voice_turn(sup.url, "sk-from-the-file") for _ in range(16)))
            assert all(n > 0 for n in counts)
            await asyncio.gather(*(_bad_key_closes_4001(sup.url) for _ in range(8)))

        asyncio.run(asyncio.wait_for(main(), 60))
        assert sup.wait_for("lenient: requests without a voice")  # announced, as in one process
        assert not any("lint:" in line for line in sup.lines)  # --no-lint reached them too
    finally:
        sup.stop()


def test_a_bad_fault_spec_fails_before_any_worker_starts() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kugelwire", "serve", "--workers", "2", "--port", "0",
         "--fault", "no-such-fault"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "fault 'no-such-fault'" in proc.stderr, proc.stderr
    assert "worker" not in proc.stdout + proc.stderr


def test_a_backend_whose_package_is_missing_is_refused_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from kugelwire.server import _workers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "trio" else real(name, *a))
    with pytest.raises(ValueError, match=r"--backend trio needs the trio package"):
        asyncio.run(_workers.supervise(2, "127.0.0.1", 0, backend="trio"))


class _Writes:
    """A stream that records every write call (unbuffered, as with PYTHONUNBUFFERED=1)."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1


def test_a_line_of_the_supervisor_or_a_worker_goes_out_in_one_write() -> None:
    # The supervisor and its workers share stdout/stderr; print() on an unbuffered stream
    # writes the text and the newline apart, and two processes' lines then interleave mid-line
    # (seen: a benchmark waiting for the supervisor's ready line hung on "...readyREADY ...").
    from kugelwire.server._workers import _say

    out = _Writes()
    _say("kugelwire: worker 1 pid 42 ready", out)  # type: ignore[arg-type]
    assert out.writes == ["kugelwire: worker 1 pid 42 ready\n"]
    assert out.flushes == 1


def test_a_worker_announces_itself_before_it_leaves_its_ready_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the supervisor announces readiness once every file exists: every worker's line is out
    from kugelwire.server import _workers

    seen: list[tuple[str, bool]] = []
    mine = tmp_path / f"0-{os.getpid()}"
    monkeypatch.setattr(_workers, "_say", lambda line, file=None: seen.append(
        (line, mine.exists())))
    life = _workers._Life(_workers.WorkerSpec(index=0, host="127.0.0.1", port=0,
                                              ready_dir=str(tmp_path)))
    life.ready()
    assert seen == [(f"kugelwire: worker 0 pid {os.getpid()} ready", False)]
    assert mine.exists()
