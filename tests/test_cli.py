"""The ``kugelwire`` command line and the pytest plugin's fixture."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kugelwire.cli import main, tokenize
from kugelwire.pytest_plugin import LocalServer
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

KEY = "cli-test-key"
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as handle:
        yield handle


def _wav(path: Path) -> tuple[int, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), w.getnframes()


@given(st.text())
def test_tokenize_keeps_every_character(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text or (not tokens and not text.strip())
    assert all(t.strip() for t in tokens)  # no whitespace-only token (it would be a no-op)


def test_tokenize_words_with_leading_space() -> None:
    tokens = tokenize("Hello there. <spell>AB</spell>!")
    assert tokens == ["Hello", " there.", " <spell>AB</spell>!"]


@pytest.mark.parametrize("endpoint", ["stream", "multi", "tts"])
def test_say_writes_a_wav_and_prints_latency(
    server: ThreadedServer, endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.wav"
    rc = main(["say", "Hello there, this is a test. Second sentence!", "--url", server.url,
               "--api-key", KEY, "--out", str(out), "--endpoint", endpoint,
               "--token-delay-ms", "0", "--word-timestamps"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rate, frames = _wav(out)
    assert rate == 24000 and frames > 0
    assert re.search(r"wrote .*out\.wav: \d+\.\d\d s of audio at 24000 Hz", printed)
    assert re.search(r"time to first audio: \d+ ms after the first token", printed)
    assert "real-time factor:" in printed
    assert re.search(r"usage: \d+\.\d\d audio seconds, \d+ characters", printed)
    # the tone engine speaks one tone per word: 8 words, in order, times increasing
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\S+)$", printed, re.M)
    assert [w for _, _, w in rows] == [
        "Hello", "there,", "this", "is", "a", "test.", "Second", "sentence!"]
    starts = [int(s) for s, _, _ in rows]
    assert starts == sorted(starts) and starts[-1] > 0


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_say_sample_rates(server: ThreadedServer, rate: int, tmp_path: Path) -> None:
    out = tmp_path / "r.wav"
    assert main(["say", "One two three.", "--url", server.url, "--api-key", KEY,
                 "--out", str(out), "--sample-rate", str(rate), "--token-delay-ms", "0"]) == 0
    got_rate, frames = _wav(out)
    assert got_rate == rate and frames > rate // 10


def test_bad_key_is_one_clear_line(
    server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["say", "Hi.", "--url", server.url, "--api-key", "wrong", "--out",
               str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "refused the API key" in err
    assert "wrong" not in err  # the key is never echoed


def test_no_server_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["say", "Hi.", "--url", f"ws://127.0.0.1:{port}", "--out", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "cannot connect" in err and "kugelwire serve" in err


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["say", "x", "--sample-rate", "12345"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_env_key_is_used(
    server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUGELAUDIO_API_KEY", KEY)
    assert main(["say", "Hi there.", "--url", server.url, "--out", str(tmp_path / "e.wav"),
                 "--token-delay-ms", "0"]) == 0


def test_demo_with_the_tone_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.wav"
    assert main(["demo", "--engine", "tone", "--out", str(out), "--token-delay-ms", "0"]) == 0
    printed = capsys.readouterr().out
    assert "time to first audio" in printed
    rate, frames = _wav(out)
    assert frames / rate > 3.0  # a whole paragraph


def _spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "kugelwire", *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_serve_then_stream_from_stdin_then_ctrl_c(tmp_path: Path) -> None:
    srv = _spawn("serve", "--port", "0", "--engine", "tone", "--api-key", KEY)
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        match = re.search(r"serving (ws://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        out = tmp_path / "s.wav"
        client = _spawn("stream", "--url", url, "--api-key", KEY, "--out", str(out),
                        stdin=subprocess.PIPE)
        assert client.stdin is not None
        for token in ["Tokens", " from", " a", " pipe.", " Done!"]:
            client.stdin.write(token)
            client.stdin.flush()
            time.sleep(0.02)
        stdout, stderr = client.communicate(timeout=20)
        assert client.returncode == 0, stderr
        assert "time to first audio" in stdout
        assert _wav(out)[1] > 0
        srv.send_signal(signal.SIGINT)
        srv.wait(timeout=15)
        assert srv.returncode == 0
        assert "shutting down" in srv.stdout.read()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def test_serve_on_a_busy_port_is_one_clear_line(server: ThreadedServer) -> None:
    srv = _spawn("serve", "--port", str(server.port), "--engine", "tone")
    _, err = srv.communicate(timeout=20)
    assert srv.returncode == 1
    assert err.startswith("kugelwire: cannot listen on 127.0.0.1:") and err.count("\n") == 1


def test_plugin_fixture(kugelwire_server: LocalServer) -> None:
    """The pytest11 plugin is registered: the fixture is available without any import."""
    from kugelwire.protocol import AudioChunk, TurnClosed
    from kugelwire.transports.sync import connect_stream

    assert kugelwire_server.url.startswith("ws://127.0.0.1:")
    assert kugelwire_server.http_url == "http" + kugelwire_server.url[2:]
    with connect_stream(kugelwire_server.url, api_key=kugelwire_server.api_key,
                        voice_id=1) as stream:
        events = stream.send_text("Plugin test.", flush=True)
        assert events is not None
        got = events.collect()
    assert any(isinstance(e, AudioChunk) for e in got)
    assert isinstance(got[-1], TurnClosed)


@pytest.mark.kugelwire_engine("tone", piece_ms=10)
def test_plugin_marker_options(kugelwire_server: LocalServer) -> None:
    assert kugelwire_server.handle.connections == 0


def test_serve_api_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--api-key, else --api-key-file (first line), else KUGELWIRE_API_KEY, else any key."""
    from kugelwire.cli import _parser, _server_api_key

    def key(*argv: str) -> str | None:
        return _server_api_key(_parser().parse_args(["serve", *argv]))

    monkeypatch.delenv("KUGELWIRE_API_KEY", raising=False)
    assert key() is None
    monkeypatch.setenv("KUGELWIRE_API_KEY", "from-env")
    assert key() == "from-env"
    path = tmp_path / "key"
    path.write_text("from-file\nignored\n", encoding="utf-8")
    assert key("--api-key-file", str(path)) == "from-file"
    assert key("--api-key", "from-flag") == "from-flag"
    with pytest.raises(SystemExit):  # one or the other
        key("--api-key", "a", "--api-key-file", str(path))


def test_serve_api_key_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--api-key-file", str(tmp_path / "missing")]) == 1
    assert "cannot read --api-key-file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    assert main(["serve", "--api-key-file", str(empty)]) == 1
    assert "is empty" in capsys.readouterr().err


def test_serve_uses_the_key_file(tmp_path: Path) -> None:
    """The server started with --api-key-file refuses other keys and accepts that one."""
    path = tmp_path / "key"
    path.write_text("file-key-123\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port", "0",
         "--api-key-file", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"serving (ws://\S+)", line)
        assert m, line
        url = m.group(1)
        assert "file-key-123" not in " ".join(proc.args)  # type: ignore[arg-type]
        assert main(["say", "Hi.", "--url", url, "--api-key", "wrong",
                     "--out", str(tmp_path / "x.wav")]) == 1
        assert main(["say", "Hi.", "--url", url, "--api-key", "file-key-123",
                     "--out", str(tmp_path / "y.wav")]) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
