"""Before/after: the core figures of :mod:`benchmarks.bench_core` for an older revision and for
this tree, alternately in one process, with the after/before ratio and its spread.

    python -m benchmarks.bench_ab [--base REV] [--rounds N] [--quick]

``--base`` defaults to the merge-base of ``HEAD`` with ``main``. That revision's ``kugelwire/``
is extracted with ``git archive`` into a temporary directory as the package ``kugelwire_base``
(its absolute ``kugelwire`` imports rewritten), so both versions live in this interpreter and
every round measures one then the other (the order alternates), so machine noise hits both
alike. Both use the standard library's base64 codec (the default install): ``pybase64`` is
hidden from both before either is imported. Figures: client receive + dispatch + ``pcm16()``
per 20 ms frame, server per 4-character token message, chunker time for N characters. A ratio
below 1 means this tree is faster.
"""

from __future__ import annotations

import sys

# Before any kugelwire import: both packages pick their base64 codec when imported, and without
# pybase64 they pick the standard library's (what every user without the ``fast`` extra runs).
sys.modules["pybase64"] = None  # type: ignore[assignment]

import argparse  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import ModuleType  # noqa: E402

import kugelwire.protocol  # noqa: E402
from benchmarks._common import FAST_BASE64, figure, skip  # noqa: E402
from benchmarks.bench_core import (  # noqa: E402
    CURRENT,
    Api,
    chunker_time,
    client_run,
    server_tokens,
    turn_texts,
)

BASE_NAME = "kugelwire_base"
#: Runs of each side per figure and round (the best one counts).
REPEATS = 4
ROOT = pathlib.Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"^(\s*)(from|import)(\s+)kugelwire\b", re.MULTILINE)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def default_base() -> str | None:
    """The merge-base of ``HEAD`` with ``main`` (or ``origin/main``); None outside a git
    checkout or without either branch."""
    for branch in ("main", "origin/main"):
        try:
            return git("merge-base", "HEAD", branch)
        except (OSError, subprocess.CalledProcessError):
            continue
    return None


def extract(rev: str, into: pathlib.Path) -> pathlib.Path:
    """``rev``'s ``kugelwire/`` as the package ``into/kugelwire_base`` (imports rewritten)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "kugelwire"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # our own repository's archive
    package = into / BASE_NAME
    (into / "kugelwire").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = _IMPORT.sub(rf"\1\2\3{BASE_NAME}", text)
        if new != text:
            path.write_text(new, encoding="utf-8")
    return package


def import_base(rev: str, into: pathlib.Path) -> ModuleType:
    """Import ``rev``'s package; fails when it reaches this tree's modules."""
    extract(rev, into)
    before = set(sys.modules)
    sys.path.insert(0, str(into))
    try:
        protocol = importlib.import_module(f"{BASE_NAME}.protocol")
    finally:
        sys.path.remove(str(into))
    leaked = sorted(m for m in set(sys.modules) - before if _ours(m))
    for name, module in list(sys.modules.items()):
        if name == BASE_NAME or name.startswith(BASE_NAME + "."):
            for key, value in vars(module).items():
                owner = (value.__name__ if isinstance(value, ModuleType)
                         else getattr(value, "__module__", None))
                if isinstance(owner, str) and _ours(owner):
                    leaked.append(f"{name}.{key} = {owner}")
    if leaked:
        raise RuntimeError(f"the base revision's package reaches this tree's modules: {leaked[:5]}")
    if pathlib.Path(protocol.__file__ or "").parent.parent != into / BASE_NAME:
        raise RuntimeError(f"imported {protocol.__file__}, not the extracted package")
    return protocol


def _ours(module: str) -> bool:
    return module == "kugelwire" or module.startswith("kugelwire.")


def measure(rounds: int, quick: bool, base: Api) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (base values, current values), one of each per round: the best of ``REPEATS``
    runs of each side, the sides interleaved run by run (ABBA...), so a burst of load on the
    machine lands on both. Every figure is CPU time of this process (``time.process_time``):
    time the process spends preempted by others does not count."""
    texts = turn_texts(20, 250 if quick else 1000)
    chars = 50_000 if quick else 100_000
    tokens = 300 if quick else 600
    probes: dict[str, Callable[[Api], float]] = {
        "client receive+dispatch+pcm16, 20 ms frame [stdlib base64] (us/frame)":
            lambda api: client_run(texts, api) * 1e6,
        "server per 4-char token message (us/token)":
            lambda api: server_tokens(3, tokens, api, time.process_time) * 1e6,
        f"chunker {chars:,} chars (ms)":
            lambda api: chunker_time(chars, api, time.process_time) * 1e3,
    }
    for probe in probes.values():  # warm-up of both, not counted
        probe(base)
        probe(CURRENT)
    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in probes}
    for r in range(rounds):
        for name, probe in probes.items():
            runs: dict[int, list[float]] = {0: [], 1: []}  # 0: base, 1: current
            for i in range(REPEATS):
                for side in ((0, 1) if (r + i) % 2 == 0 else (1, 0)):
                    runs[side].append(probe(CURRENT if side else base))
            before, after = results[name]
            before.append(min(runs[0]))
            after.append(min(runs[1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="", help="git revision (default: merge-base with main)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 15, quick 7)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    args = parser.parse_args()
    rev = args.base or default_base()
    if rev is None:
        skip("ab: before/after", "no git checkout with a main branch; pass --base REV")
        return
    short = git("rev-parse", "--short", rev)
    head = git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "kugelwire") else ""
    rounds = args.rounds or (7 if args.quick else 15)
    assert not FAST_BASE64, "pybase64 must be hidden before kugelwire is imported"
    with tempfile.TemporaryDirectory(prefix="kugelwire-ab-") as tmp:
        base = Api.of(import_base(rev, pathlib.Path(tmp)))
        print(f"ab: before = {short} ({rev}), after = this tree ({head}{dirty}, "
              f"{pathlib.Path(kugelwire.protocol.__file__ or '').parent.parent}); "
              f"{rounds} rounds alternating, stdlib base64")
        results = measure(rounds, args.quick, base)
    for name, (before, after) in results.items():
        label, unit = name.rsplit(" (", 1)
        unit = unit.rstrip(")")
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        figure(f"ab: {label}, before {short}", statistics.median(before), unit)
        figure(f"ab: {label}, after", statistics.median(after), unit)
        figure(f"ab: {label}, after/before", statistics.median(ratios), "x", "<= 1.05x",
               statistics.median(ratios) <= 1.05,
               f"(rounds {min(ratios):.3f}-{max(ratios):.3f}, "
               f"quartiles {_quartiles(ratios)})")


def _quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return "n/a"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f}-{q3:.3f}"


if __name__ == "__main__":
    main()
