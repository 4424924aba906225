"""Every Python example of the quickstart and the guides runs, against a loopback server.

Blocks are taken from the Markdown as written. ``127.0.0.1:8765`` (``kugelwire serve``'s
default address) is replaced by the test server's; each block runs in a fresh namespace in a
temporary directory and every WAV file it names must come out non-empty. A block marked
``<!-- test: pytest -->`` is a test module: it runs in a pytest subprocess (so the
``kugelwire_server`` fixture of the installed plugin is exercised) and must pass. A block marked
``<!-- skip-test -->`` is not run (kept to a minimum; listed in :data:`ALLOWED_SKIPS`).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from kugelwire.server import ThreadedServer, run_in_thread

from ._blocks import Block, blocks

pytestmark = pytest.mark.timeout(60)

#: Pages whose Python blocks are run here (bring-your-own-io.md has its own test).
PAGES = ("index.md", "quickstart.md", "server.md", "pytest-plugin.md", "build-an-sdk.md",
         "cli.md")
#: How many blocks of a page may carry ``<!-- skip-test -->`` (0 when not listed; none today).
ALLOWED_SKIPS: dict[str, int] = {}
DEFAULT_ADDRESS = "127.0.0.1:8765"


def _python_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page, "python")]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread() as handle:
        yield handle


def _check_wavs(source: str, directory: Path) -> None:
    for name in re.findall(r"[\"']([\w.-]+\.wav)[\"']", source):
        path = directory / name
        assert path.exists(), f"the example did not write {name}"
        with wave.open(str(path), "rb") as wav:
            assert wav.getnframes() > 0, f"{name} holds no audio"
            assert wav.getsampwidth() == 2 and wav.getnchannels() == 1


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda b: b.id)
def test_python_example(
    block: Block, server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.directive == "skip-test":
        pytest.skip("marked <!-- skip-test --> in the page")
    monkeypatch.chdir(tmp_path)
    if block.directive == "test: pytest":
        module = tmp_path / "test_example.py"
        module.write_text(block.source, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
            cwd=tmp_path, capture_output=True, text=True, timeout=50,
        )
        tests = len(re.findall(r"^def test_", block.source, re.MULTILINE))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{tests} passed" in result.stdout, result.stdout
        return
    assert block.directive == "", f"unknown directive {block.directive!r}"
    source = block.source.replace(DEFAULT_ADDRESS, f"127.0.0.1:{server.port}")
    exec(compile(source, block.id, "exec"), {"__name__": "__main__"})
    _check_wavs(block.source, tmp_path)


@pytest.mark.parametrize("page", PAGES)
def test_skips_stay_rare(page: str) -> None:
    skipped = [b.id for b in blocks(page, "python") if b.directive == "skip-test"]
    assert len(skipped) <= ALLOWED_SKIPS.get(page, 0), skipped


def test_quickstart_covers_every_client() -> None:
    """The quickstart shows (and so runs) asyncio, sync, trio and the official SDK."""
    sources = "\n".join(b.source for b in blocks("quickstart.md", "python"))
    for needle in ("transports.asyncio", "transports.sync", "transports.trio", "kugelaudio",
                   "kugelwire_server"):
        assert needle in sources


def _documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for block in blocks(page, "console"):
            for line in block.source.splitlines():
                if not line.startswith("$ "):
                    continue
                command = line[2:].split("|")[-1].strip()
                argv = shlex.split(command, comments=True)
                if argv and argv[0] == "kugelwire":
                    found.append((f"{block.id}: {command}", argv[1:]))
    return found


def test_documented_command_lines_parse() -> None:
    """Every ``$ kugelwire ...`` line of the pages is accepted by the CLI's parser."""
    from kugelwire import cli

    commands = _documented_commands()
    assert {argv[0] for _, argv in commands} >= {"serve", "say", "stream", "demo"}
    for where, argv in commands:
        try:
            cli._parser().parse_args(argv)
        except SystemExit as exc:  # argparse reports a bad flag by exiting
            pytest.fail(f"{where}: rejected by the CLI (exit {exc.code})")
