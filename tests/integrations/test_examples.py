"""The offline framework examples run end to end against a local server (a smoke test)."""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys
import wave

import pytest

from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("script", "framework", "extra"),
    [("pipecat_offline.py", "pipecat", "pipecat"),
     ("livekit_offline.py", "livekit.agents", "livekit")],
)
def test_offline_example(script: str, framework: str, extra: str, tmp_path: pathlib.Path) -> None:
    pytest.importorskip(
        framework, reason=f"the {extra} example needs pip install 'kugelwire[{extra}]'"
    )
    key = "test-" + secrets.token_hex(4)
    out = tmp_path / "out.wav"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    with run_in_thread(engine=ToneEngine(), api_key=key) as server:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--url", server.url, "--api-key", key,
             "--out", str(out)],
            capture_output=True, text=True, timeout=100, env=env, cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout
    with wave.open(str(out)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    # the first answer in full (3.3 s with the tone engine); of the second (3.6 s), what was
    # synthesised before the barge-in (a real-time sink plays about 1 s of it)
    assert 3.3 < seconds < 7.0, done.stdout
    assert "interrupt" in done.stdout
