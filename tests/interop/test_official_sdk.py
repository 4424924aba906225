"""The official KugelAudio Python SDK (``kugelaudio==2.7.0``), unmodified, against our server.

The SDK is pointed at a loopback server with ``api_url``. Our server runs in a background thread
(every backend, and the ASGI app under uvicorn and hypercorn) so the SDK owns its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

os.environ["KUGELAUDIO_TELEMETRY"] = "0"
import kugelaudio

from kugelwire.synth import ToneEngine
from tests.server._servers import KINDS, _free_port, running

KEY = "local-test-key"
pytestmark = pytest.mark.timeout(20)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Every backend, and the ASGI app under uvicorn and hypercorn."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(kind: str) -> Iterator[Any]:
    with running(kind, api_key=KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def slow_engine() -> ToneEngine:
    return ToneEngine(piece_ms=20, realtime_factor=1.0)  # generates at real time


@pytest.fixture(scope="module")
def slow_server(kind: str, slow_engine: ToneEngine) -> Iterator[Any]:
    with running(kind, api_key=KEY, engine=slow_engine) as handle:
        yield handle


def run(handle: Any, body: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``body(client)`` with an SDK client pointed at ``handle``; bounded at 18 s."""

    async def main() -> None:
        client = kugelaudio.KugelAudio(
            api_key=KEY, api_url=f"http://127.0.0.1:{handle.port}", telemetry=False
        )
        try:
            await asyncio.wait_for(body(client), 18)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_streaming_session_several_turns(server: Any) -> None:
    tokens = ["Hello", " world,", " this is", " turn", " one"]

    async def body(client: Any) -> None:
        async with client.tts.streaming_session(
            voice_id=1, model_id="kugel-3", language="en", word_timestamps=True
        ) as s:
            samples_per_turn = []
            for turn in range(3):
                if turn == 2:
                    effective = await s.update_settings(speed=1.2, temperature=0.3)
                    assert effective["speed"] == 1.2 and effective["temperature"] == 0.3
                chunks = []
                for tok in tokens:  # LLM-style tokens; no sentence end, so no audio yet
                    chunks += [c async for c in s.send(tok)]
                chunks += [c async for c in s.flush()]
                assert chunks and all(c.sample_rate == 24000 for c in chunks)
                assert [c.index for c in chunks] == list(range(len(chunks)))
                total = sum(c.samples for c in chunks)
                assert sum(len(c.audio) for c in chunks) == 2 * total
                final = s.last_final
                assert final is not None and final["final"] is True
                assert final["total_audio_seconds"] == pytest.approx(total / 24000, abs=1e-5)
                usage = s.last_usage
                assert usage is not None
                assert usage.audio_seconds == pytest.approx(total / 24000, abs=1e-5)
                words = [w.word for w in s.last_word_timestamps]
                assert words == "".join(tokens).split()
                stamps = s.last_word_timestamps
                assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(stamps))
                samples_per_turn.append(total)
            assert samples_per_turn[0] == samples_per_turn[1]
            assert samples_per_turn[2] < samples_per_turn[0]  # speed 1.2 from the update

    run(server, body)


def test_cancel_current_barge_in(slow_server: Any, slow_engine: ToneEngine) -> None:
    long_text = " ".join(f"word{i}" for i in range(40)) + "."

    async def body(client: Any) -> None:
        async with client.tts.streaming_session(voice_id=1, language="en") as s:
            it = s.send(long_text, flush=True).__aiter__()
            first = [await it.__anext__(), await it.__anext__()]
            assert first[0].index == 0
            await it.aclose()
            runs_before = len(slow_engine.runs)
            await s.cancel_current()  # returns on the server's ``interrupted``
            await asyncio.sleep(0.2)
            cancelled = slow_engine.runs[runs_before - 1]
            assert not cancelled.finished and cancelled.pieces_yielded < cancelled.pieces_planned
            after = [c async for c in s.send("After the barge in.", flush=True)]
            assert after and after[0].index == 0  # nothing of the cancelled turn leaks
            assert s.last_final is not None
            assert s.last_final["total_audio_seconds"] == pytest.approx(
                sum(c.samples for c in after) / 24000, abs=1e-5
            )

    run(slow_server, body)


def test_multi_context_session(server: Any) -> None:
    async def body(client: Any) -> None:
        async with client.tts.multi_context_session(
            default_voice_id=1, model_id="kugel-3", language="en", word_timestamps=True
        ) as m:
            for i, cid in enumerate(("a", "b", "c")):
                await m.create_context(cid, voice_id=i + 1)
            assert m.active_contexts == {"a", "b", "c"}
            got: dict[str, int] = {}
            for cid in ("a", "b"):
                chunks = [c async for c in m.send(cid, f"Context {cid} speaks.", flush=True)]
                assert chunks
                got[cid] = sum(c.samples for c in chunks)
                assert [w.word for w in m.get_word_timestamps(cid)][-1] == "speaks."
            # A plain send waits up to 30 s for audio (OFFICIAL-SDK §9.2); a complete sentence
            # gets audio at once, and chunk_complete_idle_timeout=0 skips the 2 s linger.
            chunks = [
                c async for c in m.send("c", "Context c speaks.", chunk_complete_idle_timeout=0)
            ]
            assert chunks
            rest = [c async for c in m.flush("c")]  # nothing buffered: ends on ``final``
            got["c"] = sum(c.samples for c in chunks + rest)
            tail = [c async for c in m.close_context("a")]
            assert tail == []
            usage_a = m.usage_for("a")
            assert usage_a is not None
            assert usage_a.audio_seconds == pytest.approx(got["a"] / 24000, abs=1e-5)
            assert [c async for c in m.close_context("b", immediate=True)] == []
            assert m.active_contexts == {"c"}
            stats = await m.close()
            assert stats.get("session_closed") is True
            usage_c = m.usage_for("c")
            assert usage_c is not None
            assert usage_c.audio_seconds == pytest.approx(got["c"] / 24000, abs=1e-5)

    run(server, body)


def test_tts_stream_async(server: Any) -> None:
    async def body(client: Any) -> None:
        for rate in (22050, 8000):  # the pooled /ws/tts socket is reused for the second
            items = [
                x
                async for x in client.tts.stream_async(
                    "A one-shot request. It has two sentences.",
                    voice_id=1,
                    model_id="kugel-3",
                    language="en",
                    sample_rate=rate,
                    word_timestamps=True,
                )
            ]
            audio = [x for x in items if isinstance(x, kugelaudio.AudioChunk)]
            words = [w.word for x in items if isinstance(x, list) for w in x]
            final = items[-1]
            assert isinstance(final, dict) and final["final"] is True
            assert final["total_samples"] == sum(a.samples for a in audio) > 0
            assert all(a.sample_rate == rate for a in audio)
            assert words == ["A", "one-shot", "request.", "It", "has", "two", "sentences."]
            assert final["usage"]["audio_seconds"] == pytest.approx(
                final["total_samples"] / rate, abs=1e-5
            )

    run(server, body)


# -- the REST catalogue routes -----------------------------------------------------------------
def _sdk_client(handle: Any, key: str = KEY) -> Any:
    return kugelaudio.KugelAudio(
        api_key=key, api_url=f"http://127.0.0.1:{handle.port}", telemetry=False
    )


def test_voices_and_models_list_return_the_catalogue(server: Any) -> None:
    from kugelwire.synth import TONE_VOICES

    client = _sdk_client(server)
    try:
        page = client.voices.list()
        assert [v.id for v in page.voices] == [v.id for v in TONE_VOICES]
        assert [v.name for v in page.voices] == [v.name for v in TONE_VOICES]
        assert page.total == len(TONE_VOICES) and (page.limit, page.offset) == (20, 0)
        assert all("en" in v.supported_languages for v in page.voices)
        assert [v.id for v in client.voices.list(limit=2, offset=1).voices] == [2, 3]
        detail = client.voices.get(2)
        assert (detail.id, detail.name, detail.sex.value) == (2, "Tone High", "female")
        models = [m.id for m in client.models.list()]
        assert models[:2] == ["kugel-3", "kugel-3.5"] and "kugel-1" in models
        with pytest.raises(kugelaudio.KugelAudioError) as info:
            client.voices.get(99999)
        assert "Voice not found" in str(info.value)
    finally:
        client.close()


def test_rest_routes_need_the_key(server: Any) -> None:
    client = _sdk_client(server, key="not-the-key")
    try:
        with pytest.raises(kugelaudio.KugelAudioError) as info:
            client.voices.list()
        assert "401" in repr(info.value) or "nauthori" in str(info.value)
    finally:
        client.close()


def test_sdk_voice_from_the_catalogue_is_spoken_and_an_unknown_one_refused(
    server: Any,
) -> None:
    async def body(client: Any) -> None:
        async with client.tts.streaming_session(voice_id=2, language="en") as s:
            chunks = [c async for c in s.send("Voice two.", flush=True)]
            assert chunks
        with pytest.raises(kugelaudio.KugelAudioError) as info:
            await client.tts.generate_async("No such voice.", voice_id=99999, language="en")
        assert "Voice not found" in str(info.value)
        result = await client.tts.generate_async("Voice three.", voice_id=3, language="en")
        assert result.audio

    run(server, body)


# -- the SDK against the shipped commands ---------------------------------------------------------
def _command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "kugelwire.server.asgi:app", "--host",
                "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if kind == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "kugelwire.server.asgi:app", "--bind",
                f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "kugelwire", "serve", "--backend", kind, "--engine", "tone",
            "--api-key", KEY, "--port", str(port)]


@pytest.mark.parametrize("command", KINDS)
def test_sdk_against_the_command_line_server(command: str) -> None:
    """``kugelwire serve --backend X``, ``uvicorn kugelwire.server.asgi:app`` and ``hypercorn
    kugelwire.server.asgi:app`` (``KUGELWIRE_ENGINE=tone``), each in its own process."""
    if command in ("uvicorn", "hypercorn"):
        pytest.importorskip(command)
    port = _free_port()
    env = {**os.environ, "KUGELWIRE_ENGINE": "tone", "KUGELWIRE_API_KEY": KEY}
    proc = subprocess.Popen(_command(command, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)

        async def body(client: Any) -> None:
            async with client.tts.streaming_session(voice_id=1, language="en") as s:
                for _ in range(2):
                    chunks = [c async for c in s.send("Hello from a process.", flush=True)]
                    assert chunks and s.last_final is not None
                    assert s.last_final["total_audio_seconds"] == pytest.approx(
                        sum(c.samples for c in chunks) / 24000, abs=1e-5)
            items = [x async for x in client.tts.stream_async("One shot.", voice_id=1)]
            assert isinstance(items[-1], dict) and items[-1]["total_samples"] > 0

        run(_Port(port), body)
    finally:
        proc.terminate()
        proc.wait(10)


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port
