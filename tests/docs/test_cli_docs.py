"""The command line's pages say what the program does: its start-up output, its voices."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ._blocks import blocks

pytestmark = pytest.mark.timeout(60)


def _documented_startup(page: str) -> list[str]:
    for block in blocks(page, "console"):
        lines = block.source.splitlines()
        if lines and lines[0] == "$ kugelwire serve":
            return lines[1:]
    raise AssertionError(f"{page} shows no `$ kugelwire serve` block")


@pytest.mark.parametrize("page", ["quickstart.md", "cli.md"])
def test_serve_prints_what_the_docs_show(page: str) -> None:
    """`kugelwire serve` (default engine, no key) prints exactly the page's lines; only the port
    differs (the test asks for a free one instead of 8765)."""
    pytest.importorskip("soxr", reason="the documented output is the eSpeak engine's")
    documented = _documented_startup(page)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kugelwire", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline().rstrip("\n") for _ in documented]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    port = re.search(r"127\.0\.0\.1:(\d+)", "\n".join(printed))
    assert port, printed
    assert [line.replace(f":{port.group(1)}", ":8765") for line in printed] == documented


def test_the_voice_table_matches_the_engine() -> None:
    pytest.importorskip("soxr")
    from kugelwire.synth.espeak import DEFAULT_VOICE, VOICES

    text = (blocks.__globals__["DOCS"] / "cli.md").read_text(encoding="utf-8")
    section = text[text.index("### Voices"):]
    rows = re.findall(r"^\| (\d+)[^|]*\| `([^`]+)`", section, re.M)
    assert {int(n): voice for n, voice in rows} == {
        n: f"{accent}+{variant}" for n, (accent, variant) in VOICES.items()}
    assert re.search(rf"^\| {DEFAULT_VOICE}, none, unknown ids", section, re.M)
