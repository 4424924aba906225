"""The rule checks' surfaces: the pytest fixture, ``kugelwire serve`` (printing findings, and
``--no-lint``), ``kugelwire conformance`` without hypothesis."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from kugelwire.cli import _parser, _serve_linter, main
from kugelwire.conformance._client import RawConnection
from kugelwire.lint import Linter, Rule
from kugelwire.transports.sync import connect_stream

pytestmark = pytest.mark.timeout(60)


def test_the_fixture_reports_findings(kugelwire_server: Any) -> None:
    kugelwire_server.assert_follows_rules()  # nothing yet
    with connect_stream(kugelwire_server.url, api_key=kugelwire_server.api_key, voice_id=1,
                        language="en") as stream:
        list(stream.send_text("Hello at once.", flush=True))  # no pre-connect
    with pytest.raises(AssertionError) as info:
        kugelwire_server.assert_follows_rules()  # waits for the close, then fails
    assert "[no-preconnect]" in str(info.value) and "1 finding(s)" in str(info.value)
    assert [f.rule for f in kugelwire_server.findings] == [Rule.NO_PRECONNECT]
    kugelwire_server.assert_follows_rules(ignore=["no-preconnect"])
    kugelwire_server.assert_follows_rules(ignore=[Rule.NO_PRECONNECT])


def test_the_fixture_passes_a_clean_client(kugelwire_server: Any) -> None:
    with connect_stream(kugelwire_server.url, api_key=kugelwire_server.api_key, voice_id=1,
                        language="en") as stream:
        time.sleep(0.3)
        for token in ["A ", "whole ", "reply, ", "one ", "flush."]:
            stream.send_text(token)
        list(stream.flush())
    kugelwire_server.assert_follows_rules()
    assert kugelwire_server.findings == []


def test_serve_flags() -> None:
    args = _parser().parse_args(["serve", "--no-lint"])
    assert _serve_linter(args) is False
    linter = _serve_linter(_parser().parse_args(["serve"]))
    assert isinstance(linter, Linter)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("no_lint", [False, True])
def test_serve_prints_findings_as_they_happen(no_lint: bool) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "kugelwire", "serve", "--engine", "tone", "--port", str(port),
           "--api-key", "k", *(["--no-lint"] if no_lint else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()
        proc.stdout.readline()  # the playground line
        conn = RawConnection(f"ws://127.0.0.1:{port}", "/ws/tts/stream", api_key="k", timeout=5)
        time.sleep(0.3)
        conn.send({"text": "Spell <spell>AB</spell>.", "flush": True, "voice_id": 1})
        conn.receive_until(lambda m: any(x.get("session_closed") for x in m), 10)
        conn.close()
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    lines = [line for line in out.splitlines() if line.startswith("kugelwire: lint:")]
    if no_lint:
        assert lines == []
    else:
        assert len(lines) == 1 and "[spell-without-language]" in lines[0]


def test_conformance_without_hypothesis_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    assert main(["conformance", "ws://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'kugelwire[conformance]'" in err
