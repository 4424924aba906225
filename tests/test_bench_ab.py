"""``benchmarks/bench_ab.py`` imports another revision's package beside this tree's (no timing
here: the figures themselves run under the benchmark lock, outside the suite)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)

PROBE = """
import pathlib, sys, tempfile
import benchmarks.bench_ab as ab
with tempfile.TemporaryDirectory() as tmp:
    protocol = ab.import_base(sys.argv[1], pathlib.Path(tmp))
    base = ab.Api.of(protocol)
    current = ab.CURRENT
    for name in ("Chunker", "StreamClientSession", "AudioChunk", "StreamServerSession",
                 "SynthesisRequested"):
        ours, theirs = getattr(current, name), getattr(base, name)
        assert ours is not theirs, name
        assert theirs.__module__.startswith("kugelwire_base."), theirs.__module__
        assert ours.__module__.startswith("kugelwire."), ours.__module__
    texts = ab.turn_texts(20, 5)
    assert ab.client_run(texts, base) > 0 and ab.client_run(texts, current) > 0
    print(protocol.__file__)
"""


def run_probe(rev: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, rev], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _exists(rev: str) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"],
                          capture_output=True).returncode == 0


# HEAD, and the start of session 23 (whose protocol package imported itself absolutely:
# ``from kugelwire.protocol._events import ...``), when the clone has it
@pytest.mark.parametrize("rev", ["HEAD", "dde7d3e"])
def test_base_revision_is_a_separate_package(rev: str) -> None:
    if not _exists(rev):
        pytest.skip(f"{rev} is not in this clone")
    proc = run_probe(rev)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("kugelwire_base/protocol/__init__.py")


def test_a_revision_that_does_not_exist_is_an_error() -> None:
    proc = run_probe("no-such-revision-xyz")
    assert proc.returncode != 0
    assert "CalledProcessError" in proc.stderr
