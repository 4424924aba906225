"""Shared helpers of the benchmark scripts (not part of the test suite).

Every script prints its figures for humans and, for :mod:`benchmarks.run_all`, one line per
figure: ``FIGURE {"name": ..., "value": ..., "unit": ..., "target": ..., "ok": true|false|null}``
(``ok`` is null for figures without a target and for skipped ones).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import statistics
from collections.abc import Callable, Iterator

# internal on purpose: stdlib_base64() swaps the codec functions the audio parser calls
from kugelwire.protocol import _messages

__all__ = ["FAST_BASE64", "best_of", "figure", "median", "parse_args", "percentile", "skip",
           "stdlib_base64"]

#: Whether the optional ``fast`` extra (pybase64) is installed and used by kugelwire.
FAST_BASE64 = _messages._b64encode is not base64.b64encode


@contextlib.contextmanager
def stdlib_base64() -> Iterator[None]:
    """Make kugelwire use the standard library's base64 codec (as without the ``fast`` extra)
    for the block."""
    saved = (_messages._b64encode, _messages._b64decode, _messages._b64decode_checked,
             _messages._b64decode_exact)
    saved_check = _messages._b64check
    _messages._b64check = _messages._check_alphabet
    codec = _messages._stdlib_base64_codec()  # what kugelwire uses without the extra
    (_messages._b64encode, _messages._b64decode, _messages._b64decode_checked,
     _messages._b64decode_exact) = codec
    try:
        yield
    finally:
        (_messages._b64encode, _messages._b64decode, _messages._b64decode_checked,
         _messages._b64decode_exact) = saved
        _messages._b64check = saved_check

def parse_args(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (noisier)")
    return parser.parse_args()


def figure(
    name: str, value: float, unit: str, target: str = "", ok: bool | None = None, note: str = ""
) -> None:
    """Print one figure (human line + machine line)."""
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    print(f"  {name:<58} {shown:>12} {unit:<10} {target:<22} {verdict} {note}".rstrip())
    print("FIGURE " + json.dumps({
        "name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note,
    }), flush=True)


def skip(name: str, reason: str, target: str = "") -> None:
    print(f"  {name:<58} {'SKIP':>12} {'':<10} {target:<22} ({reason})")
    print("FIGURE " + json.dumps({
        "name": name, "value": None, "unit": "", "target": target, "ok": None,
        "note": f"SKIP: {reason}",
    }), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def best_of(fn: Callable[[], float], repeats: int) -> float:
    """The smallest of ``repeats`` timings returned by ``fn()`` (the least disturbed run)."""
    return min(fn() for _ in range(repeats))
