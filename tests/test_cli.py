"""The ``kugelwire`` command line and the pytest plugin's fixture."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        srv.send_signal(signal.SIGTERM)  # a graceful stop (Ctrl-C is tested below)
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


# -- help, version -------------------------------------------------------------------------------
def _all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    from kugelwire.cli import _parser

    todo = [("kugelwire", _parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {cmd}", sub) for cmd, sub in action.choices.items())


def test_every_option_of_every_command_has_help() -> None:
    seen = set()
    for name, parser in _all_parsers():
        seen.add(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
    assert seen >= {"kugelwire", "kugelwire serve", "kugelwire say", "kugelwire stream",
                    "kugelwire demo"}


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import kugelwire

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"kugelwire {kugelwire.__version__}\n"


@pytest.mark.parametrize("command", ["say", "stream", "serve"])
def test_help_lists_the_voices(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("soxr")
    from kugelwire.synth.espeak import VOICES

    with pytest.raises(SystemExit):
        main([command, "--help"])
    printed = capsys.readouterr().out
    for number, (accent, variant) in VOICES.items():
        assert re.search(rf"^\s+{number}\s+{re.escape(accent)}\+{variant}\b", printed, re.M)
    assert "--output-format" in printed or command == "serve"


# -- user errors: one line, non-zero status, never a traceback -----------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "kugelwire", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def _one_line(err: str) -> str:
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert err.count("\n") == 1 and err.startswith("kugelwire: "), err
    return err


@pytest.fixture(scope="module")
def nobody() -> str:
    """A loopback URL nobody listens on: a command that checks its input first never gets to
    connecting, so it must not say "cannot connect"."""
    return f"ws://127.0.0.1:{_free_port()}"


def test_bad_output_path_fails_before_connecting(nobody: str, tmp_path: Path) -> None:
    for out, needle in [(str(tmp_path / "missing" / "x.wav"), "No such file or directory"),
                        (str(tmp_path), "is a directory")]:
        done = _run("say", "Hi.", "--url", nobody, "--out", out)
        assert done.returncode == 1
        err = _one_line(done.stderr)
        assert f"cannot write {out}" in err and needle in err


def test_bad_output_path_is_checked_before_synthesising(
    server: ThreadedServer, tmp_path: Path
) -> None:
    before = server.connections
    done = _run("say", "Hi.", "--url", server.url, "--api-key", KEY, "--out",
                str(tmp_path / "missing" / "x.wav"))
    assert done.returncode == 1 and "cannot write" in _one_line(done.stderr)
    assert server.connections == before


def test_demo_bad_output_path(tmp_path: Path) -> None:
    done = _run("demo", "--engine", "tone", "--out", str(tmp_path / "no" / "demo.wav"))
    assert done.returncode == 1 and "cannot write" in _one_line(done.stderr)
    assert done.stdout == ""  # no server was started, nothing was streamed


@pytest.mark.parametrize(("url", "needle"), [
    ("ws://127.0.0.1:99999", "port out of range 0-65535"),
    ("ws://127.0.0.1:abc", "port could not be cast"),
    ("ftp://127.0.0.1:8765", "the scheme must be ws, wss, http or https"),
    ("ws://", "no host name"),
])
def test_bad_url(url: str, needle: str, tmp_path: Path) -> None:
    done = _run("say", "Hi.", "--url", url, "--out", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    err = _one_line(done.stderr)
    assert f"bad --url {url!r}" in err and needle in err
    assert not (tmp_path / "x.wav").exists()


def test_no_server_names_the_url_once(nobody: str, tmp_path: Path) -> None:
    done = _run("say", "Hi.", "--url", nobody, "--out", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    err = _one_line(done.stderr)
    assert err == (f"kugelwire: cannot connect to {nobody}: connection refused "
                   "(is a server running? start one with: kugelwire serve)\n")
    assert not (tmp_path / "x.wav").exists()  # no empty file left behind


def test_failed_run_keeps_an_existing_file(nobody: str, tmp_path: Path) -> None:
    out = tmp_path / "keep.wav"
    out.write_bytes(b"precious")
    assert _run("say", "Hi.", "--url", nobody, "--out", str(out)).returncode == 1
    assert out.read_bytes() == b"precious"


def test_bad_key_in_a_subprocess(server: ThreadedServer, tmp_path: Path) -> None:
    done = _run("say", "Hi.", "--url", server.url, "--api-key", "wrong",
                "--out", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    assert "refused the API key" in _one_line(done.stderr) and "wrong" not in done.stderr


@pytest.mark.parametrize("endpoint", ["stream", "multi", "tts"])
def test_no_text_is_one_line(nobody: str, endpoint: str, tmp_path: Path) -> None:
    done = _run("say", " ", "--url", nobody, "--endpoint", endpoint,
                "--out", str(tmp_path / "x.wav"))
    assert done.returncode == 1  # known before connecting: no server needed to say so
    assert _one_line(done.stderr) == "kugelwire: no text to speak (TEXT is empty)\n"
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("endpoint", ["stream", "multi", "tts"])
def test_no_text_on_stdin_is_one_line(
    server: ThreadedServer, endpoint: str, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-m", "kugelwire", "stream", "--url", server.url, "--api-key", KEY,
         "--endpoint", endpoint, "--out", str(tmp_path / "x.wav")],
        input="  \n", capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode == 1
    assert _one_line(done.stderr) == "kugelwire: no text to speak\n"
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["say", "x", "--sample-rate", "12345"], "invalid choice: 12345"),
    (["say", "x", "--output-format", "mp3_44100"], "invalid choice: 'mp3_44100'"),
    (["say"], "the following arguments are required: text"),
    (["serve", "--port", "70000"], "70000 is out of range (0-65535"),
    (["serve", "--port", "http"], "'http' is not a port number"),
    (["say", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_option_is_one_line(argv: list[str], needle: str) -> None:
    done = _run(*argv)
    assert done.returncode == 2
    err = _one_line(done.stderr)
    assert needle in err and "--help" in err


def test_contradicting_formats(nobody: str) -> None:
    done = _run("say", "x", "--url", nobody, "--sample-rate", "16000",
                "--output-format", "ulaw_8000")
    assert done.returncode == 1
    assert "contradicts --output-format ulaw_8000" in _one_line(done.stderr)


# -- output formats -------------------------------------------------------------------------------
def _riff(path: Path) -> dict[str, Any]:
    """The header fields of a WAV file, read with struct (``wave`` cannot read G.711)."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    fields: dict[str, Any] = {}
    pos = 12
    while pos < len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, rate, brate, align, bits = struct.unpack("<HHIIHH", body[:16])
            fields.update(tag=tag, channels=ch, rate=rate, byte_rate=brate, align=align,
                          bits=bits, fmt_size=size)
            if size >= 18:
                fields["cb_size"] = struct.unpack("<H", body[16:18])[0]
        elif cid == b"fact":
            fields["fact"] = struct.unpack("<I", body)[0]
        elif cid == b"data":
            fields["data"] = body
        pos += 8 + size + size % 2
    return fields


@pytest.mark.parametrize(("fmt", "tag"), [("ulaw_8000", 7), ("alaw_8000", 6)])
@pytest.mark.parametrize("endpoint", ["stream", "multi", "tts"])
def test_g711_wav(
    server: ThreadedServer, fmt: str, tag: int, endpoint: str, tmp_path: Path
) -> None:
    from kugelwire.protocol import alaw_decode, ulaw_decode

    out = tmp_path / "g711.wav"
    assert main(["say", "One two three.", "--url", server.url, "--api-key", KEY, "--out",
                 str(out), "--output-format", fmt, "--endpoint", endpoint,
                 "--token-delay-ms", "0"]) == 0
    riff = _riff(out)
    assert (riff["tag"], riff["channels"], riff["rate"], riff["byte_rate"], riff["align"],
            riff["bits"], riff["fmt_size"], riff["cb_size"]) == (tag, 1, 8000, 8000, 1, 8, 18, 0)
    assert riff["fact"] == len(riff["data"]) > 8000 // 10
    decode = ulaw_decode if tag == 7 else alaw_decode
    assert max(abs(s) for s in memoryview(decode(riff["data"])).cast("h")) > 1000  # not silence


def test_g711_wav_is_read_by_sox(server: ThreadedServer, tmp_path: Path) -> None:
    import shutil

    if shutil.which("sox") is None:
        pytest.skip("sox is not installed (apt-get install sox)")
    for fmt, encoding in [("ulaw_8000", "u-law"), ("alaw_8000", "a-law")]:
        out = tmp_path / f"{fmt}.wav"
        assert main(["say", "Hi there.", "--url", server.url, "--api-key", KEY, "--out",
                     str(out), "--output-format", fmt, "--token-delay-ms", "0"]) == 0
        info = subprocess.run(["sox", "--i", str(out)], capture_output=True, text=True,
                              timeout=10)
        assert info.returncode == 0, info.stderr
        assert re.search(r"Sample Rate\s*:\s*8000", info.stdout)
        assert re.search(rf"Sample Encoding\s*:\s*8-bit {encoding}", info.stdout, re.I)
        assert re.search(r"Channels\s*:\s*1", info.stdout)


def test_pcm_formats_are_plain_wavs(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "p.wav"
    for fmt in ["pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100"]:
        assert main(["say", "One two.", "--url", server.url, "--api-key", KEY, "--out",
                     str(out), "--output-format", fmt, "--token-delay-ms", "0"]) == 0
        assert _wav(out)[0] == int(fmt[4:])


@pytest.mark.parametrize(("name", "flags", "fmt"), [
    ("a.ulaw", [], "ulaw_8000"), ("a.al", [], "alaw_8000"), ("a.raw", [], "pcm_16000"),
    ("a.wav", ["--raw"], "ulaw_8000"),
])
def test_raw_output(
    server: ThreadedServer, name: str, flags: list[str], fmt: str, tmp_path: Path
) -> None:
    raw, wav = tmp_path / name, tmp_path / "ref.wav"
    common = ["say", "One two.", "--url", server.url, "--api-key", KEY, "--output-format", fmt,
              "--token-delay-ms", "0"]
    assert main([*common, "--out", str(raw), *flags]) == 0
    assert main([*common, "--out", str(wav)]) == 0
    assert raw.read_bytes()[:4] != b"RIFF"
    assert raw.read_bytes() == _riff(wav)["data"]  # the same audio, with no header


def test_wav_header_fields() -> None:
    from kugelwire.cli import wav_header

    header = wav_header("mulaw", 8000, 3)
    assert len(header) == 12 + 26 + 12 + 8
    path_fields = _riff_bytes(header + b"\x01\x02\x03\x00")
    assert (path_fields["tag"], path_fields["fact"], path_fields["data"]) == (7, 3, b"\x01\x02\x03")
    pcm = wav_header("pcm_s16le", 44100, 4)
    assert len(pcm) == 44 and _riff_bytes(pcm + b"\0" * 4)["byte_rate"] == 88200


def _riff_bytes(data: bytes) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "h.wav"
        path.write_bytes(data)
        return _riff(path)


# -- Ctrl-C: real SIGINT on real subprocesses ----------------------------------------------------
INTERRUPT_S = 1.0  # the promise: exit within 1 s of the first Ctrl-C


def _interrupt(proc: subprocess.Popen[str]) -> tuple[float, str, str]:
    """SIGINT, then wait for the exit; stdin (if piped) stays open (communicate() would close
    it, and an EOF would end ``stream`` without any Ctrl-C)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - sent
    assert proc.stdout is not None and proc.stderr is not None
    return elapsed, proc.stdout.read(), proc.stderr.read()


def _wait_for_audio(proc: subprocess.Popen[str], server: ThreadedServer,
                    timeout: float = 15) -> None:
    """Wait until the client is connected, then a second more (audio is flowing, if any)."""
    deadline = time.monotonic() + timeout
    while server.connections == 0 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)


LONG = " ".join(f"This is sentence number {i} of a long text." for i in range(60))


@pytest.mark.parametrize("endpoint", ["stream", "multi", "tts"])
def test_ctrl_c_during_say_saves_the_audio(endpoint: str, tmp_path: Path) -> None:
    # audio in real time: after a second, a second or so of a minutes-long text has arrived
    with run_in_thread(engine=ToneEngine(realtime_factor=1.0), api_key=KEY) as srv:
        out = tmp_path / "say.wav"
        delay = "0" if endpoint == "tts" else "20"  # /ws/tts sends the text in one request
        proc = _spawn("say", LONG, "--url", srv.url, "--api-key", KEY, "--out", str(out),
                      "--endpoint", endpoint, "--token-delay-ms", delay)
        _wait_for_audio(proc, srv)
        elapsed, _, err = _interrupt(proc)
    assert proc.returncode == 130 and elapsed < INTERRUPT_S, (proc.returncode, elapsed, err)
    assert re.fullmatch(r"kugelwire: interrupted; wrote .*say\.wav with the \d+\.\d\d s of "
                        r"audio received so far\n", _one_line(err))
    rate, frames = _wav(out)
    assert rate == 24000 and 0 < frames < 10 * rate  # some, not all, of the text


def test_ctrl_c_during_stream_does_not_wait_for_stdin(tmp_path: Path) -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as srv:
        out = tmp_path / "stream.wav"
        proc = _spawn("stream", "--url", srv.url, "--api-key", KEY, "--out", str(out),
                      stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write("Some text arrives. Then the pipe stays open. ")
        proc.stdin.flush()  # and is never closed: the model is still "thinking"
        _wait_for_audio(proc, srv)
        elapsed, _, err = _interrupt(proc)
        proc.stdin.close()
    assert proc.returncode == 130 and elapsed < INTERRUPT_S, (proc.returncode, elapsed, err)
    assert "interrupted; wrote" in _one_line(err)
    assert _wav(out)[1] > 0


def test_ctrl_c_before_any_text_writes_an_empty_wav(tmp_path: Path) -> None:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as srv:
        out = tmp_path / "empty.wav"
        proc = _spawn("stream", "--url", srv.url, "--api-key", KEY, "--out", str(out),
                      "--output-format", "alaw_8000", stdin=subprocess.PIPE)
        _wait_for_audio(proc, srv)
        elapsed, _, err = _interrupt(proc)
        assert proc.stdin is not None
        proc.stdin.close()
    assert proc.returncode == 130 and elapsed < INTERRUPT_S, (proc.returncode, elapsed, err)
    assert "with the 0.00 s of audio" in _one_line(err)
    riff = _riff(out)
    assert (riff["tag"], riff["rate"], riff["data"]) == (6, 8000, b"")


def test_ctrl_c_during_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo.wav"
    proc = _spawn("demo", "--engine", "tone", "--out", str(out), "--token-delay-ms", "150")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("kugelwire demo: local server at ws://127.0.0.1:")
    time.sleep(2.0)
    elapsed, _, err = _interrupt(proc)
    assert proc.returncode == 130 and elapsed < INTERRUPT_S, (proc.returncode, elapsed, err)
    assert "interrupted; wrote" in _one_line(err)
    rate, frames = _wav(out)
    assert 0 < frames < 3.0 * rate  # the paragraph is longer than what was said so far


def test_ctrl_c_stops_serve_with_a_client_mid_turn(tmp_path: Path) -> None:
    srv = _spawn("serve", "--port", "0", "--engine", "tone", "--api-key", KEY)
    client = None
    try:
        assert srv.stdout is not None
        match = re.search(r"serving (ws://127\.0\.0\.1:\d+)", srv.stdout.readline())
        assert match
        client = _spawn("stream", "--url", match.group(1), "--api-key", KEY,
                        "--out", str(tmp_path / "c.wav"), stdin=subprocess.PIPE)
        assert client.stdin is not None
        client.stdin.write(LONG)
        client.stdin.flush()
        time.sleep(1.5)
        elapsed, out, err = _interrupt(srv)
        assert srv.returncode == 130 and elapsed < INTERRUPT_S, (srv.returncode, elapsed, err)
        assert _one_line(err) == "kugelwire: interrupted; the server stopped\n"
        assert "shutting down" not in out
        client.stdin.close()
        client.wait(timeout=10)
        assert client.returncode == 1  # the server went away: one line, not a traceback
        assert client.stderr is not None
        _one_line(client.stderr.read())
    finally:
        for proc in (srv, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_connect_failures_never_repeat_the_url_or_the_key() -> None:
    import socket
    import ssl

    from kugelwire.cli import _connect_reason
    from kugelwire.errors import ConnectionFailed

    url = "ws://h:1/ws/tts/stream?api_key=SECRET&sdk=kugelwire"

    def failed(message: str, cause: BaseException | None = None) -> ConnectionFailed:
        exc = ConnectionFailed(message)
        exc.__cause__ = cause
        return exc

    cases = {
        "connection refused": failed(f"cannot connect to {url}: [Errno 111] Connect call failed",
                                     ConnectionRefusedError(111, "Connect call failed")),
        "cannot resolve the host name (Name or service not known)": failed(
            f"cannot connect to {url}: x", socket.gaierror(-2, "Name or service not known")),
        "TLS failed (WRONG_VERSION_NUMBER)": failed(
            f"cannot connect to {url}: x", _ssl_error(ssl)),
        "timed out": failed(f"timed out connecting to {url}"),
        "HTTP 404 at the upgrade: Not found": failed("HTTP 404 at the upgrade: Not found"),
        "closed early": failed(f"cannot connect to {url}: closed early"),
    }
    for expected, exc in cases.items():
        assert _connect_reason(exc) == expected


def _ssl_error(ssl: Any) -> BaseException:
    err = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    err.reason = "WRONG_VERSION_NUMBER"
    return err


def test_out_dash_writes_the_audio_to_stdout(server: ThreadedServer, tmp_path: Path) -> None:
    ref = tmp_path / "ref.ulaw"
    common = ["say", "One two.", "--url", server.url, "--api-key", KEY, "--output-format",
              "ulaw_8000", "--token-delay-ms", "0"]
    assert main([*common, "--out", str(ref)]) == 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "kugelwire", *common, "--out", "-", "--raw"],
                          capture_output=True, env=env, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ref.read_bytes()  # the audio only; the report went to stderr
    assert done.stderr.decode().startswith("wrote stdout: ")


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


def test_cli_log_lines_go_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # The handler must not keep the stderr of its set-up: a later replacement (a test's capture,
    # an application's redirect) gets the lines, and a closed one is never written to.
    import io
    import logging

    from kugelwire import cli

    logger = logging.getLogger("kugelwire")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    cli._log_to_stderr()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("kugelwire.client").warning("a line for the current stderr")
    assert second.getvalue() == "kugelwire: a line for the current stderr\n"
