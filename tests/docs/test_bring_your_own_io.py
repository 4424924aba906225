"""The plain-socket client of docs/bring-your-own-io.md runs, as printed, against a local server."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kugelwire.protocol import AudioChunk, TurnClosed
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.transports import sync as kw_sync

from ._blocks import blocks

pytestmark = pytest.mark.timeout(30)

KEY = "byo key+/="
TEXT = "Hello from a plain socket. A second sentence follows it!"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread(api_key=KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    (block,) = blocks("bring-your-own-io.md", "python")
    assert block.directive == ""
    namespace: dict[str, Any] = {"__name__": "byo_example"}
    exec(compile(block.source, block.id, "exec"), namespace)
    return namespace


def test_example_is_short_and_complete() -> None:
    (block,) = blocks("bring-your-own-io.md", "python")
    assert len(block.source.splitlines()) <= 80
    for name in ("ClientConnection", "StreamClientSession", "next_deadline", "handle_timeout"):
        assert name in block.source


def test_example_speaks_the_same_audio_as_the_sync_client(
    example: dict[str, Any], server: ThreadedServer, tmp_path: Path
) -> None:
    out = tmp_path / "byo.wav"
    seconds = example["speak"](server.url, TEXT, str(out), api_key=KEY)
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == 24000
        pcm = wav.readframes(wav.getnframes())
    assert seconds == pytest.approx(len(pcm) / 2 / 24000) and seconds > 0.5

    # The same turn through the blocking transport: the same words, the same tones.
    with kw_sync.connect_stream(
        server.url, api_key=KEY, voice_id=1, language="en", sample_rate=24000
    ) as stream:
        turn = stream.send_text(TEXT, flush=True)
        assert turn is not None
        events = turn.collect()
    assert isinstance(events[-1], TurnClosed)
    reference = b"".join(e.pcm16() for e in events if isinstance(e, AudioChunk))
    assert events[-1].total_audio_seconds == pytest.approx(len(reference) / 2 / 24000, abs=1e-3)
    assert pcm == reference


def test_example_reports_a_rejected_key(
    example: dict[str, Any], server: ThreadedServer, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="HTTP 401"):
        example["speak"](server.url, TEXT, str(tmp_path / "no.wav"), api_key="wrong")
