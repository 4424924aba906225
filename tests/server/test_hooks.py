"""The hooks other parts build on: one connection factory (fault injection wraps it) whose
connections can ask every backend for a TCP reset, and the round-robin engine scheduler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kugelwire.protocol._server import ServerLimits
from kugelwire.server import BACKENDS
from kugelwire.server._core import (
    ConnectionCore,
    ServerCore,
    ServerOptions,
    default_connection,
)

from ._servers import served

pytestmark = pytest.mark.timeout(30)


class _ResetOnData:
    """A ServerConnection wrapper that asks for a TCP RST as soon as bytes arrive."""

    def __init__(self, core: ConnectionCore, route: Any, now: float) -> None:
        self._core = core
        self._conn = default_connection(core, route, now)

    def receive_data(self, data: bytes, now: float) -> None:
        self._core.abort(reset=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_connection_can_ask_for_a_tcp_reset(backend: str) -> None:
    async def main() -> None:
        async with served(backend, connection_factory=_ResetOnData) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                data = await asyncio.wait_for(reader.read(1024), 5)
                assert data == b"", data  # a FIN instead of a RST would end up here
                raise AssertionError("closed with a FIN, not a RST")
            writer.close()
            for _ in range(200):
                if server.stats()["connections"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.stats()["connections"] == 0

    asyncio.run(main())


class _Blocked:
    max_concurrency = 1

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Any:
        yield b"\x00\x00" * 10


def _peer_with_jobs(core: ServerCore, n: int) -> ConnectionCore:
    """A connection whose session has ``n`` contexts ready for the engine."""
    from kugelwire.protocol._client import MultiClientSession
    from kugelwire.protocol._ws import ClientConnection

    conn = core.connect(0.0)
    session = MultiClientSession()
    client = ClientConnection(session, "ws://127.0.0.1:1/ws/tts/multi", now=0.0,
                              keepalive_interval=None)
    conn.receive_data(client.data_to_send(), 0.0)
    client.receive_data(conn.data_to_send(), 0.0)
    for i in range(n):
        session.create_context(f"c{i}", 0.0, voice_id=1)
        session.send_text(f"c{i}", "Hello there.", 0.0, flush=True)
    conn.receive_data(client.data_to_send(), 0.0)
    return conn


def test_engine_slots_go_round_robin_across_connections() -> None:
    core = ServerCore(ServerOptions(engine=_Blocked(), limits=ServerLimits(), ping_interval=None))
    greedy, polite = _peer_with_jobs(core, 6), _peer_with_jobs(core, 1)
    order = []
    for _ in range(4):
        (job,) = core.take_jobs()  # one slot: one job at a time
        order.append(job.peer)
        core.job_done(job, None, 0.0, None, 0.0)  # exhausted: the chunk is complete
    assert order[:2] in ([greedy, polite], [polite, greedy]), "the second connection waited"


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_in_thread_serves_and_stops(backend: str) -> None:
    from kugelwire.protocol._client import TTSClientSession
    from kugelwire.protocol._events import RequestFinal
    from kugelwire.server import run_in_thread

    from ._client import RawClient

    with run_in_thread(api_key="k", backend=backend) as handle:  # type: ignore[arg-type]
        assert handle.url == f"ws://127.0.0.1:{handle.port}"

        async def main() -> None:
            session = TTSClientSession(voice_id=1)
            client = await RawClient(session, handle.url, api_key="k").connect()
            session.request("Threaded.", client.now)
            client.flush()
            await client.pump(lambda: bool(client.of(RequestFinal)))
            await client.aclose()

        asyncio.run(asyncio.wait_for(main(), 15))
        handle.shutdown(1012, 2)
        assert handle.stats() == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_the_anyio_backend_runs_on_both_anyio_backends(anyio_backend: str) -> None:
    import threading

    import anyio

    from kugelwire.protocol._client import StreamClientSession
    from kugelwire.protocol._events import TurnClosed
    from kugelwire.server import serve

    from ._client import RawClient

    ready, stop, box = threading.Event(), threading.Event(), {}

    async def server_main() -> None:
        async with serve(backend="anyio", api_key="k") as server:
            box["server"] = server
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)
            await server.shutdown(1012, 2)
            box["stats"] = server.stats()

    thread = threading.Thread(target=anyio.run, args=(server_main,),
                              kwargs={"backend": anyio_backend}, daemon=True)
    thread.start()
    assert ready.wait(10)

    async def client_main() -> None:
        session = StreamClientSession(voice_id=1)
        client = await RawClient(session, box["server"].url, api_key="k").connect()
        session.send_text("On anyio.", client.now, flush=True)
        client.flush()
        await client.pump(lambda: bool(client.of(TurnClosed)))
        await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(client_main(), 15))
    finally:
        stop.set()
        thread.join(15)
    assert box["stats"] == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}
