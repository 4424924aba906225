"""Run every benchmark script and print every figure with its target and PASS/MISS.

    python -m benchmarks.run_all [--quick] [--only core,loopback,...] [--markdown FILE]

Each script runs in its own process (servers in further processes); a script that fails is
reported and the others still run. ``--markdown`` also writes the table as Markdown (for
``benchmarks/README.md``). The figures are not part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

SCRIPTS = {
    "core": "benchmarks.bench_core",
    "loopback": "benchmarks.bench_loopback",
    "client": "benchmarks.bench_client",
    "tokens": "benchmarks.bench_tokens",
    "scale": "benchmarks.bench_scale",
    "metrics": "benchmarks.bench_metrics",
    "voice": "benchmarks.bench_voice",
    "lint": "benchmarks.bench_lint",
    "ab": "benchmarks.bench_ab",
}
#: How long a script may run (seconds) before it is stopped and reported as failed; its figures
#: printed until then are kept. The workers' search of bench_scale grows with the machine's
#: capacity (every size it holds adds 3 windows), so it gets longer.
TIMEOUT = 600
TIMEOUTS = {"scale": 2400}


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.system()} {platform.machine()}, {model or 'unknown CPU'}, "
            f"nproc={os.cpu_count()}, load avg {load}, Python {platform.python_version()}")


def run(module: str, quick: bool, timeout: float = TIMEOUT) -> tuple[list[dict[str, Any]], str]:
    """The figures ``module`` printed and, if it failed or ran out of time, why."""
    cmd = [sys.executable, "-m", module] + (["--quick"] if quick else [])
    # its own process group: a script stopped for its time takes its servers and load
    # generators with it (killing the script alone left them running, holding their ports)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        return _figures(stdout), f"stopped after {timeout:g} s (timeout)"
    error = "" if proc.returncode == 0 else (stderr.strip().splitlines() or ["?"])[-1]
    return _figures(stdout), error


def _figures(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("FIGURE ")]


def _value(fig: dict[str, Any]) -> str:
    value = fig["value"]
    if value is None:
        return "SKIP"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(SCRIPTS))
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCRIPTS)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"kugelwire benchmarks, {started}\n{machine()}\n")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in names:
        t1 = time.perf_counter()
        figures, error = run(SCRIPTS[name], args.quick, TIMEOUTS.get(name, TIMEOUT))
        rows += figures
        took = time.perf_counter() - t1
        failed = f", FAILED: {error}" if error else ""
        print(f"[{name}: {len(figures)} figures in {took:.0f} s{failed}]")
        if error:
            rows.append({"name": f"{name}: script failed", "value": None, "unit": "",
                         "target": "", "ok": False, "note": error})
    print()
    width = max(len(r["name"]) for r in rows) if rows else 10
    lines = []
    for r in rows:
        verdict = {True: "PASS", False: "MISS", None: ""}[r["ok"]]
        lines.append((r["name"], _value(r), r["unit"], r["target"], verdict, r.get("note", "")))
        print(f"{r['name']:<{width}}  {_value(r):>10} {r['unit']:<9} {r['target']:<22} "
              f"{verdict:<4} {r.get('note', '')}".rstrip())
    passed = sum(1 for r in rows if r["ok"] is True)
    missed = sum(1 for r in rows if r["ok"] is False)
    print(f"\n{passed} PASS, {missed} MISS, total {time.perf_counter() - t0:.0f} s")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(f"Run {started} on {machine()}; "
                    f"`python -m benchmarks.run_all{' --quick' if args.quick else ''}`.\n\n")
            f.write("| figure | value | unit | target | verdict | note |\n")
            f.write("|---|---:|---|---|---|---|\n")
            for line in lines:
                f.write("| " + " | ".join(x.replace("|", "/") for x in line) + " |\n")
            f.write(f"\n{passed} PASS, {missed} MISS.\n")


if __name__ == "__main__":
    main()
