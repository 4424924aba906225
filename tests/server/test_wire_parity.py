"""A wire-level probe, run against every way to serve: the exact server frames (order, chunking,
idle auto-flush, ``<spell>``, cancel, adversarial input) from each backend and from the ASGI app
under uvicorn and hypercorn must equal the asyncio backend's, and the server must still serve a
normal turn afterwards."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kugelwire.protocol._server import ServerLimits
from tests.faults._util import client_frame, server_frames, text_frame, upgrade_request

from ._servers import KINDS, served

pytestmark = pytest.mark.timeout(60)
KEY = "probe-key"
LIMITS = ServerLimits(idle_flush_s=0.6)
#: timings measured by the server: they vary from run to run
_VOLATILE = {"gen_ms", "rtf", "ttfa_ms"}

Step = tuple[str, Any]
SCENARIOS: dict[str, tuple[str, list[Step]]] = {
    "chunking_and_spell": ("/ws/tts/stream", [
        ("send", {"text": "Hello world. This is <spell>KW</spell> spelled", "voice_id": 1}),
        ("send", {"text": " and more words! A question?"}),
        ("send", {"flush": True}),
        ("until", "session_closed"),
    ]),
    "idle_auto_flush": ("/ws/tts/stream", [
        ("send", {"text": "No flush here, the idle timer ends the turn", "voice_id": 1}),
        ("until", "session_closed"),
    ]),
    "cancel": ("/ws/tts/stream", [
        ("send", {"text": " ".join(f"word{i}" for i in range(30)) + ".", "voice_id": 1,
                  "flush": True}),
        ("until", "audio"),
        ("send", {"cancel": True}),
        ("until", "interrupted"),
        ("send", {"text": "After the cancel.", "flush": True}),
        ("until", "session_closed"),
    ]),
    "adversarial": ("/ws/tts/stream", [
        ("raw", client_frame(b"{not json")),
        ("raw", client_frame(b"\x00\x01binary", opcode=0x2)),
        ("send", {"text": 42}),
        ("send", {"voice_id": 1, "text": "Still serving.", "flush": True, "bogus_field": 1}),
        ("until", "session_closed"),
    ]),
    "multi": ("/ws/tts/multi", [
        ("send", {"context_id": "a", "text": "Context a. ", "voice_settings": {"voice_id": 1},
                  "flush": True}),
        ("until", "final"),
        ("send", {"context_id": "a", "close_context": True}),
        ("until", "context_closed"),
        ("send", {"close_socket": True}),
        ("until", "closed"),
    ]),
    "one_shot": ("/ws/tts", [
        ("send", {"text": "One shot. Two sentences.", "voice_id": 1, "sample_rate": 16000}),
        ("until", "final"),
    ]),
}


def _key(frame: dict[str, Any]) -> str:
    for name in ("session_closed", "interrupted", "context_closed", "final", "audio", "error"):
        if name in frame:
            return name
    return "?"


def _normal(payload: bytes) -> Any:
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")
    return _strip(obj)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):  # every connection has its own request_id: compare presence
        return {k: "<id>" if k == "request_id" else _strip(v)
                for k, v in obj.items() if k not in _VOLATILE}
    return obj


async def _probe(port: int, path: str, steps: list[Step]) -> list[Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(path, key=KEY))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    frames: list[Any] = []
    rest = b""

    async def until(what: str) -> None:
        nonlocal rest
        while True:
            for op, payload in frames_seen[len(frames):]:
                frames.append((op, _normal(payload)))
            if what == "closed" and frames and frames[-1][0] == 0x8:
                return
            if any(op == 0x1 and isinstance(f, dict) and _key(f) == what for op, f in frames):
                seen = [f for op, f in frames if op == 0x1 and isinstance(f, dict)]
                if _key(seen[-1]) == what or what in ("audio",):
                    return
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, f"closed while waiting for {what}: {frames[-3:]}"
            got, rest = server_frames(rest + data)
            frames_seen.extend(got)

    frames_seen: list[tuple[int, bytes]] = []
    for kind, arg in steps:
        if kind == "send":
            writer.write(text_frame(arg))
        elif kind == "raw":
            writer.write(arg)
        else:
            await until(arg)
    writer.close()
    assert any(isinstance(f, dict) and "audio" in f for _, f in frames), "no audio"
    return frames


async def _transcripts(kind: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    async with served(kind, api_key=KEY, limits=LIMITS) as server:
        for name, (path, steps) in SCENARIOS.items():
            out[name] = await _probe(server.port, path, steps)
        out["after"] = await _probe(server.port, *SCENARIOS["chunking_and_spell"])
    return out


_reference: dict[str, list[Any]] = {}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "asyncio"])
def test_same_frames_as_the_asyncio_backend(kind: str) -> None:
    if not _reference:
        _reference.update(asyncio.run(_transcripts("asyncio")))
    got = asyncio.run(_transcripts(kind))
    for name, frames in _reference.items():
        if name == "cancel":  # how much audio precedes ``interrupted`` is a matter of timing
            ours, theirs = _split(got[name]), _split(frames)
            shorter = min(len(ours[0]), len(theirs[0]))
            assert ours[0][:shorter] == theirs[0][:shorter], name
            assert ours[1] == theirs[1], name
        else:
            assert got[name] == frames, name


def _split(frames: list[Any]) -> tuple[list[Any], list[Any]]:
    """Frames before ``interrupted``, and from it on."""
    i = next(i for i, (_, f) in enumerate(frames) if isinstance(f, dict) and "interrupted" in f)
    return frames[:i], frames[i:]
