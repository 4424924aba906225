"""``benchmarks/run_all.py`` reports a script that fails or runs out of time and keeps what it
printed until then (the other scripts still run)."""

from __future__ import annotations

import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402

SLOW = """
import json, time
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


def test_a_failing_script_reports_its_last_error_line(scripts: pathlib.Path) -> None:
    figures, error = run_all.run("failing_bench", quick=False, timeout=30)
    assert [f["name"] for f in figures] == ["bad: first"]
    assert error == "the server did not start"


def test_every_longer_timeout_names_a_script() -> None:
    assert set(run_all.TIMEOUTS) <= set(run_all.SCRIPTS)
