"""``benchmarks/run_all.py`` reports a script that fails or runs out of time and keeps what it
printed until then (the other scripts still run)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402

SLOW = """
import json, subprocess, sys, time
# a server of its own, as the benchmarks start them: it must not outlive a stopped script
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open("child.pid", "w").write(str(child.pid))
print("FIGURE " + json.dumps({"name": "slow: first", "value": 1.0, "unit": "x", "target": "",
                              "ok": None, "note": ""}), flush=True)
time.sleep(60)
print("FIGURE " + json.dumps({"name": "slow: never", "value": 2.0, "unit": "x", "target": "",
                              "ok": None, "note": ""}), flush=True)
"""

FAILING = """
import json
print("FIGURE " + json.dumps({"name": "bad: first", "value": 1.0, "unit": "x", "target": "",
                              "ok": None, "note": ""}), flush=True)
raise SystemExit("the server did not start")
"""


@pytest.fixture
def scripts(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    (tmp_path / "slow_bench.py").write_text(SLOW, encoding="utf-8")
    (tmp_path / "failing_bench.py").write_text(FAILING, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # ``python -m`` finds them in the working directory
    return tmp_path


def test_a_script_out_of_time_is_stopped_and_keeps_its_figures(scripts: pathlib.Path) -> None:
    t0 = time.monotonic()
    figures, error = run_all.run("slow_bench", quick=False, timeout=3)
    assert time.monotonic() - t0 < 30
    assert [f["name"] for f in figures] == ["slow: first"]
    assert error == "stopped after 3 s (timeout)"
    child = int((scripts / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the stopped script's own child process was left running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by its parent) counts as gone
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def test_a_failing_script_reports_its_last_error_line(scripts: pathlib.Path) -> None:
    figures, error = run_all.run("failing_bench", quick=False, timeout=30)
    assert [f["name"] for f in figures] == ["bad: first"]
    assert error == "the server did not start"


def test_every_longer_timeout_names_a_script() -> None:
    assert set(run_all.TIMEOUTS) <= set(run_all.SCRIPTS)
