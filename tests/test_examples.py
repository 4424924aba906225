"""Every script of examples/ runs, offline, against a local server, within a time bound."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = "examples-key"
#: the framework integrations' examples are run by tests/integrations (they need the frameworks)
FRAMEWORKS = ("pipecat_", "livekit_")
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py")
                 if not p.name.startswith(("_", *FRAMEWORKS)))
#: what each script writes, given --out NAME (message_level_websockets writes NAME-<n>.wav)
WRITES = {"message_level_websockets.py": ["out-0.wav", "out-1.wav"]}


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread(engine=ToneEngine(), api_key=KEY) as handle:
        yield handle


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KUGELAUDIO_API_KEY", None)
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90)


def _audio_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.getnframes() / wav.getframerate()


def test_the_examples_are_listed() -> None:
    assert SCRIPTS == ["barge_in.py", "message_level_websockets.py", "multi_context.py",
                       "stream_turn_to_wav.py"]
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in SCRIPTS:
        assert f"`{script}`" in readme, f"examples/README.md does not describe {script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_against_a_server(
    script: str, server: ThreadedServer, tmp_path: Path
) -> None:
    if script == "message_level_websockets.py":
        pytest.importorskip("websockets")
    out = "out" if script in WRITES else "out.wav"
    done = _run(script, "--url", server.url, "--api-key", KEY, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for name in WRITES.get(script, [out]):
        assert _audio_seconds(tmp_path / name) > 0.5, name
        assert f"wrote {name}" in done.stdout


def test_example_starts_its_own_server(tmp_path: Path) -> None:
    done = _run("stream_turn_to_wav.py", "--out", "own.wav", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("local server at ws://127.0.0.1:")
    assert "first audio" in done.stdout and _audio_seconds(tmp_path / "own.wav") > 1.0


def test_a_refused_key_fails_the_example(server: ThreadedServer, tmp_path: Path) -> None:
    done = _run("stream_turn_to_wav.py", "--url", server.url, "--api-key", "wrong",
                cwd=tmp_path)
    assert done.returncode != 0 and "AuthenticationError" in done.stderr
