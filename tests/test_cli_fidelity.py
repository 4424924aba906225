"""``kugelwire voices``, ``serve --lenient`` and the CLI's default voice against a strict server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kugelwire.cli import main
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import TONE_VOICES, ToneEngine

KEY = "cli-fidelity-key"
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as handle:
        yield handle


def test_voices_lists_the_catalogue(server: ThreadedServer, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    assert main(["voices", "--url", server.url, "--api-key", KEY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "LANGUAGES", "HANDLE"]
    assert [int(line.split()[0]) for line in lines[1:]] == [v.id for v in TONE_VOICES]
    assert "Tone High" in lines[2] and lines[2].rstrip().endswith("tone-high")


def test_voices_with_the_key_from_the_environment(
    server: ThreadedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUGELAUDIO_API_KEY", KEY)
    assert main(["voices", "--url", f"http://127.0.0.1:{server.port}"]) == 0
    assert "Tone Low" in capsys.readouterr().out


def test_voices_errors_are_one_clear_line(
    server: ThreadedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUGELAUDIO_API_KEY", raising=False)
    assert main(["voices", "--url", server.url, "--api-key", "wrong"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the API key (HTTP 401)" in err[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["voices", "--url", f"ws://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kugelwire: cannot reach http://127.0.0.1:{port}")
    assert main(["voices", "--url", "ftp://x"]) == 1
    assert "expected ws://, wss://, http:// or https://" in capsys.readouterr().err


def test_say_default_voice_works_against_a_strict_server(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.wav"
    for endpoint in ("stream", "multi", "tts"):
        assert main(["say", "Hello there.", "--url", server.url, "--api-key", KEY,
                     "--endpoint", endpoint, "--out", str(out)]) == 0
    assert main(["say", "Hi.", "--url", server.url, "--api-key", KEY, "--voice", "99999",
                 "--out", str(out)]) == 1
    assert "Voice not found" in capsys.readouterr().err


def _serve(*flags: str) -> list[str]:
    """The lines ``kugelwire serve FLAGS`` prints before it is stopped (after 'playground')."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "serving ws://" in lines[0] and "playground" in lines[1], lines
        proc.send_signal(signal.SIGINT)
        lines += proc.stdout.read().splitlines()
        proc.wait(10)
        return lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_lenient_and_faults_are_announced() -> None:
    lines = _serve("--lenient", "--fault", "reject:503")
    assert "lenient" in lines[2]
    assert "FAULT INJECTION ACTIVE (1 fault(s))" in lines[3]
    assert "reject every upgrade with HTTP 503" in lines[4]
    assert not any("lenient" in line or "FAULT" in line for line in _serve())
