"""``kugelwire conformance`` against real servers on loopback: the local server conforms (on
every backend listed in BACKENDS); servers broken on purpose fail with a shrunk transcript."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kugelwire.cli import main
from kugelwire.conformance import run
from kugelwire.server import ServerOptions, ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

pytestmark = pytest.mark.timeout(120)

KEY = "conf-key"
#: server backends to test against (add the others here as they land)
BACKENDS = ["asyncio", "trio"]


@contextmanager
def local_server(backend: str) -> Iterator[str]:
    """The local server's URL on ``backend``, running in a background thread."""
    if backend == "asyncio":
        with run_in_thread(engine=ToneEngine(), api_key=KEY, lint=False) as server:
            yield server.url
        return
    assert backend == "trio", backend
    trio = pytest.importorskip("trio")
    from kugelwire.server import trio_serve

    ready: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        async with trio_serve(engine=ToneEngine(), api_key=KEY, lint=False) as server:
            ready["url"], ready["stop"] = server.url, trio.Event()
            ready["token"] = trio.lowlevel.current_trio_token()
            started.set()
            await ready["stop"].wait()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ready["url"]
    finally:
        trio.from_thread.run_sync(ready["stop"].set, trio_token=ready["token"])
        thread.join(10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cli_passes_against_the_local_server(backend: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with local_server(backend) as url:
        out = subprocess.run(
            [sys.executable, "-m", "kugelwire", "conformance", url, "--api-key", KEY,
             "--voice-id", "1", "--examples", "10", "--budget", "9", "--rate", "0",
             "--seed", "7", "--json", str(report)],
            capture_output=True, text=True, timeout=90, env={**os.environ},
        )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "conforms" in out.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert [r["endpoint"] for r in data["results"]] == ["/ws/tts/stream", "/ws/tts/multi",
                                                        "/ws/tts"]
    assert all(r["examples"] >= 3 for r in data["results"])  # really ran sessions


# -- servers that break one invariant ------------------------------------------------------
def _stale_audio(context_id: str | None) -> str:
    """A made-up audio frame (one of a cancelled chunk) for when none was sent yet."""
    frame: dict[str, Any] = {"audio": "AAAA", "enc": "pcm_s16le", "idx": 7, "sr": 24000,
                             "samples": 1, "chunk_id": 0}
    if context_id is not None:
        frame["context_id"] = context_id
    return json.dumps(frame)


class _Broken:
    """A real server session, with one rule broken (deterministically) in what it sends."""

    def __init__(self, session: Any, mode: str) -> None:
        self._s, self._mode = session, mode
        self._last_audio: dict[str | None, str] = {}  # per context (None: no context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    @property
    def close_code(self) -> int | None:
        code: int | None = self._s.close_code
        return code

    def messages_to_send(self) -> list[str]:
        out: list[str] = []
        for text in self._s.messages_to_send():
            mode = self._mode
            if mode == "skip-final" and text.startswith('{"final"'):
                continue
            if mode == "wrong-total-samples" and text.startswith('{"final"'):
                final = json.loads(text)
                final["total_samples"] += 1
                text = json.dumps(final)
            out.append(text)
            if text.startswith('{"audio"'):
                self._last_audio[json.loads(text).get("context_id")] = text
            if mode == "audio-after-interrupted" and text.startswith('{"interrupted"'):
                # one stale frame of the cancelled turn
                out.append(self._last_audio.get(None) or _stale_audio(None))
            if mode == "audio-after-context-closed" and text.startswith('{"context_closed"'):
                cid = json.loads(text)["context_id"]
                out.append(self._last_audio.get(cid) or _stale_audio(cid))
        return out


@dataclass(frozen=True)
class BrokenOptions(ServerOptions):
    """The server's options with every session wrapped in :class:`_Broken`."""

    mode: str = "skip-final"

    def new_session(self, path: str, now: float | None = None, *args: Any, **kwargs: Any) -> Any:
        session = super().new_session(path, now, *args, **kwargs)
        return None if session is None else _Broken(session, self.mode)


@contextmanager
def broken_server(mode: str) -> Iterator[ThreadedServer]:
    options = BrokenOptions(engine=ToneEngine(), api_key=KEY, mode=mode)
    with ThreadedServer("127.0.0.1", 0, options) as server:
        yield server


@pytest.mark.parametrize(
    ("mode", "endpoint", "invariant"),
    [("skip-final", "/ws/tts/stream", "frame-order"),
     ("audio-after-interrupted", "/ws/tts/stream", "after-interrupted"),
     ("audio-after-context-closed", "/ws/tts/multi", "frame-order"),
     ("wrong-total-samples", "/ws/tts", "usage")],
)
def test_a_broken_server_fails_with_a_shrunk_transcript(
    mode: str, endpoint: str, invariant: str
) -> None:
    with broken_server(mode) as server:
        report = run(server.url, api_key=KEY, endpoints=[endpoint], examples=60, seed=3,
                     budget=40, rate=None, voice_id=1)
    assert not report.passed
    result = report.results[0]
    assert result.transcript is not None and result.script is not None
    assert invariant in {v.invariant for v in result.violations}
    sent = [s for s in result.script if s[0] == "send"]
    # shrunk: a handful of frames, not the dozens a generated session has
    assert len(sent) <= 4, result.script
    if mode == "skip-final":
        assert any("session_closed without a `final`" in v.message for v in result.violations)
    elif mode == "audio-after-interrupted":
        assert any(s[1].get("cancel") for s in sent)
    elif mode == "audio-after-context-closed":
        assert any("after its context_closed" in v.message for v in result.violations)


def test_a_saved_failure_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    with broken_server("skip-final") as server:
        argv = ["conformance", server.url, "--api-key", KEY, "--voice-id", "1", "--endpoint",
                "stream", "--examples", "40", "--seed", "1", "--rate", "0", "--budget", "20"]
        assert main([*argv, "--json", str(report)]) == 1
        first = capsys.readouterr().out
        assert "does NOT conform" in first and "the shrunk failing session" in first
        assert "!!! frame-order: session_closed without a `final`" in first
        saved = json.loads(report.read_text())
        assert saved["passed"] is False and saved["results"][0]["script"]
        assert main([*argv, "--replay", str(report)]) == 1
        assert "replay still fails" in capsys.readouterr().out
    with local_server("asyncio") as url:  # the same script passes on a correct server
        assert main(["conformance", url, "--api-key", KEY, "--replay", str(report)]) == 0


def test_a_refused_upgrade_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with local_server("asyncio") as url:
        code = main(["conformance", url, "--api-key", "wrong", "--endpoint", "tts",
                     "--examples", "3", "--rate", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert "/ws/tts: could not run: the upgrade to" in out and "HTTP 401" in out
    assert "wrong" not in out  # the key is not echoed


def test_kugelwire_conformance_passes_against_kugelwire_serve(tmp_path: Path) -> None:
    """The two commands as a user runs them (the server with its rule checks on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"  # a file, not a pipe: its findings never block the server
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port",
             str(port)], stdout=sink, stderr=subprocess.STDOUT, text=True,
        )
    try:
        deadline = time.monotonic() + 20
        while "serving" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "-m", "kugelwire", "conformance", f"ws://127.0.0.1:{port}",
             "--voice-id", "1", "--examples", "6", "--budget", "6", "--rate", "0"],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        server.terminate()
        server.wait(15)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ws://127.0.0.1:{port} conforms" in out.stdout
    assert "kugelwire: lint: [" in log.read_text()  # the rule checks were on (and printed)
