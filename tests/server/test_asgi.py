"""The ASGI app: mounted in Starlette at a prefix, HTTP denial responses (401 / 404 bodies as the
standalone server's), accept-and-close 4001 where the server has no denial extension, and the
environment-configured ``app`` under real ``uvicorn`` / ``hypercorn`` processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from kugelwire.protocol._client import StreamClientSession
from kugelwire.protocol._events import AudioChunk, TurnClosed
from kugelwire.server.asgi import create_app

from ._client import RawClient
from ._servers import _free_port, _wait_port

pytestmark = pytest.mark.timeout(30)
KEY = "asgi-key"


def _upgrade(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        data += chunk
    writer.close()
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _turn(url: str) -> None:
    session = StreamClientSession(voice_id=1)
    client = await RawClient(session, url, api_key=KEY).connect()
    assert client.connected
    session.send_text("Mounted under a prefix.", client.now, flush=True)
    client.flush()
    await client.pump(lambda: bool(client.of(TurnClosed)))
    assert client.of(AudioChunk)
    await client.aclose()


def test_mounted_in_starlette_under_uvicorn() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    starlette_routing = pytest.importorskip("starlette.routing")
    from starlette.applications import Starlette

    tts = create_app(api_key=KEY)
    outer = Starlette(routes=[starlette_routing.Mount("/tts", app=tts)])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(outer, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    async def main() -> None:
        await _wait_port(port)
        await _turn(f"ws://127.0.0.1:{port}/tts")
        page = await _raw(port, b"GET /tts/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200") and b"<html" in page.lower()
        bad_key = await _raw(port, _upgrade("/tts/ws/tts/stream?api_key=wrong"))
        assert bad_key.startswith(b"HTTP/1.1 401"), bad_key[:60]
        assert json.loads(bad_key.split(b"\r\n\r\n", 1)[1])["error_code"] == "UNAUTHORIZED"
        unknown = await _raw(port, _upgrade(f"/tts/ws/nope?api_key={KEY}"))
        assert unknown.startswith(b"HTTP/1.1 404"), unknown[:60]
        assert json.loads(unknown.split(b"\r\n\r\n", 1)[1])["error_code"] == "NOT_FOUND"
        assert tts.stats()["connections"] == 0

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        server.should_exit = True
        thread.join(10)


def test_without_the_denial_extension_a_bad_key_is_accepted_and_closed_4001() -> None:
    app = create_app(api_key=KEY)
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def main() -> None:
        await inbox.put({"type": "websocket.connect"})
        scope = {"type": "websocket", "path": "/ws/tts/stream", "query_string": b"api_key=no",
                 "headers": [], "root_path": ""}
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(main())
    kinds = [m["type"] for m in sent]
    assert kinds == ["websocket.accept", "websocket.send", "websocket.close"], kinds
    assert json.loads(sent[1]["text"])["error_code"] == "UNAUTHORIZED"
    assert sent[2]["code"] == 4001
    assert app.stats() == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}


def test_importing_the_module_needs_no_environment() -> None:
    code = ("import os; [os.environ.pop(k, None) for k in ('KUGELWIRE_ENGINE', "
            "'KUGELWIRE_API_KEY')]; import kugelwire.server.asgi as m; print(type(m.app).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=20)
    assert out.stdout.strip() == "_FromEnvironment"


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_the_env_configured_app_under_a_real_server_process(server: str) -> None:
    pytest.importorskip(server)
    port = _free_port()
    cmd = {"uvicorn": [sys.executable, "-m", "uvicorn", "kugelwire.server.asgi:app",
                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
           "hypercorn": [sys.executable, "-m", "hypercorn", "kugelwire.server.asgi:app",
                         "--bind", f"127.0.0.1:{port}"]}[server]
    env = {**os.environ, "KUGELWIRE_ENGINE": "tone", "KUGELWIRE_API_KEY": KEY}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async def main() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            await _turn(f"ws://127.0.0.1:{port}")
            bad = await _raw(port, _upgrade("/ws/tts?api_key=wrong"))
            assert bad.startswith(b"HTTP/1.1 401"), bad[:60]

        asyncio.run(asyncio.wait_for(main(), 25))
    finally:
        proc.terminate()
        proc.wait(10)


def test_without_the_denial_extension_a_full_server_accepts_and_closes_1013() -> None:
    app = create_app(api_key=KEY, max_connections=1)

    async def main() -> list[dict[str, Any]]:
        first: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await first.put({"type": "websocket.connect"})
        scope = {"type": "websocket", "path": "/ws/tts/stream", "root_path": "",
                 "query_string": f"api_key={KEY}".encode(), "headers": []}

        async def ignore(message: Any) -> None:
            pass

        busy = asyncio.ensure_future(app(scope, first.get, ignore))
        while app.stats()["sessions"] < 1:
            await asyncio.sleep(0.01)
        sent: list[dict[str, Any]] = []

        second: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await second.put({"type": "websocket.connect"})

        async def record(message: Any) -> None:
            sent.append(dict(message))
            if message["type"] == "websocket.close":  # the ASGI server answers the close
                await second.put({"type": "websocket.disconnect", "code": 1013})

        await asyncio.wait_for(app(scope, second.get, record), 5)
        await first.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(busy, 5)
        return sent

    sent = asyncio.run(main())
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"], sent
    assert sent[1]["code"] == 1013
    assert app.stats() == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}
