"""Abrupt disconnects leak nothing: tasks, threads, connections, sessions, syntheses or memory.

Clients open a socket and vanish at every stage of a connection's life — before the request,
halfway through the upgrade, right after it, and in the middle of a turn (after the first audio)
— with a RST (``SO_LINGER 0``) or a bare FIN, many at a time. Afterwards the server must be back
to its baseline: no tasks on its loop beyond the idle ones, no extra threads, every counter of
``ServerHandle.stats()`` at 0, and RSS within a generous bound. It runs on every backend.

The default is 2,000 disconnects (about 3 s on loopback); ``KUGELWIRE_LEAK_CONNECTIONS=N`` runs
another count. The numbers are printed (run with ``-s`` to see them). RSS grows a few MiB on the
first thousands of connections as the allocator's arenas warm up, then stays flat (10,000
disconnects end within the same bound); Python objects are counted exactly, so a real leak of
one object per connection fails the test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

import pytest

from kugelwire.protocol._events import TurnClosed
from kugelwire.server import BACKENDS, Backend, ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine

from ._util import must, rss_kib, text_frame, upgrade_request

KEY = "leak-key"
CONNECTIONS = int(os.environ.get("KUGELWIRE_LEAK_CONNECTIONS", "2000"))
CONCURRENCY = 50
RSS_BOUND_KIB = 20 * 1024
KINDS = ("before_request", "mid_handshake", "after_handshake", "mid_turn", "mid_turn_fin")
TEXT = "Leak test sentence one. " * 20

pytestmark = pytest.mark.timeout(60 + CONNECTIONS // 20)


async def _one(port: int, kind: str) -> str:
    """One connection that dies abruptly at the stage ``kind``; returns how far it got."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    if kind != "mid_turn_fin":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reached = "connected"
    try:
        request = upgrade_request("/ws/tts/stream", key=KEY)
        if kind == "mid_handshake":
            writer.write(request[: len(request) // 2])
            await writer.drain()
            reached = "half request"
        elif kind != "before_request":
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            reached = "upgraded"
            if kind.startswith("mid_turn"):
                writer.write(text_frame({"text": TEXT, "voice_id": 1, "flush": True}))
                data = b""
                while b'"audio"' not in data:  # the turn is producing audio
                    chunk = await reader.read(65536)
                    assert chunk, "closed before audio"
                    data += chunk
                reached = "audio"
    finally:
        writer.transport.abort()  # RST with SO_LINGER 0, else FIN; never a close frame
    return reached


async def _churn(port: int, total: int, concurrency: int) -> Counter[str]:
    """``total`` abrupt disconnects, ``concurrency`` at a time, the kinds in rotation."""
    reached: Counter[str] = Counter()
    numbers = iter(range(total))

    async def worker() -> None:
        for i in numbers:
            reached[await _one(port, KINDS[i % len(KINDS)])] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return reached


def _server_tasks(server: ThreadedServer) -> int:
    """Tasks on the server's loop (asyncio); the other backends count 0 here (their tasks are
    checked through ``stats()``)."""
    if server.backend != "asyncio":
        return 0

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # minus this one

    return int(server.call(count))


#: Idle worker threads of trio's and anyio's thread caches: they come and go on the libraries'
#: schedule (created on demand up to the engine's slots, retired after 10 s idle), so they are
#: counted apart from every other thread.
_POOLED = ("Trio thread", "AnyIO worker thread")


def _gc_objects() -> int:
    """The objects the garbage collector tracks, less the stale entries of trio's deadline
    heap. trio deletes lazily: an ended cancel scope with a deadline stays in the heap, as a
    ``(deadline, id, scope)`` tuple with the scope and its cancel reason, until the heap holds
    1,000 more entries than twice the live deadlines and trio prunes it. So the count of those
    swings by up to ~3,000 between two moments whatever the server does; trio bounds it, and
    the live entries (a scope still waiting on its deadline) are counted."""
    objects = gc.get_objects()
    stale = 0
    for obj in objects:
        if type(obj) is list and obj and type(obj[0]) is tuple and len(obj[0]) == 3 \
                and type(obj[0][2]).__name__ == "CancelScope":
            for deadline, _, scope in obj:
                if deadline != getattr(scope, "_registered_deadline", deadline):
                    stale += 2 + (getattr(scope, "_cancel_reason", None) is not None)
    return len(objects) - stale


def _threads() -> tuple[int, int]:
    """(threads other than idle library workers, idle library workers)."""
    names = [t.name for t in threading.enumerate()]
    pooled = sum(name.startswith(_POOLED) for name in names)
    return len(names) - pooled, pooled


def _stats(server: ThreadedServer) -> dict[str, int]:
    return server.call(server.stats)  # type: ignore[no-any-return]


def _settle(server: ThreadedServer, timeout: float = 15.0) -> dict[str, int]:
    idle = {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}
    deadline = time.monotonic() + timeout
    while (stats := _stats(server)) != idle and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


def _full_turn(port: int) -> None:
    """A normal turn end to end (warms up the engine threads and caches)."""
    from kugelwire.transports.asyncio import connect_stream

    async def main() -> None:
        async with await connect_stream(f"ws://127.0.0.1:{port}", api_key=KEY,
                                        voice_id=1) as stream:
            turns = [must(await stream.send_text(f"Warm up {i}.", flush=True)) for i in range(3)]
            for turn in turns:
                assert isinstance((await turn.collect())[-1], TurnClosed)

    asyncio.run(main())


@pytest.mark.parametrize("backend", BACKENDS)
def test_abrupt_disconnects_leak_nothing(backend: Backend) -> None:
    engine = ToneEngine(history=16)
    with run_in_thread(api_key=KEY, engine=engine, backend=backend) as server:
        port = server.port
        # warm-up: the engine pool's threads, import-time caches, allocator arenas
        _full_turn(port)
        asyncio.run(_churn(port, 100, CONCURRENCY))
        assert _settle(server)["connections"] == 0
        gc.collect()
        (threads0, pooled0), tasks0, rss0 = _threads(), _server_tasks(server), rss_kib()
        objects0 = _gc_objects()

        t0 = time.monotonic()
        reached = asyncio.run(_churn(port, CONNECTIONS, CONCURRENCY))
        churn_s = time.monotonic() - t0
        stats = _settle(server)
        settle_s = time.monotonic() - t0 - churn_s
        gc.collect()
        (threads1, pooled), tasks1, rss1 = _threads(), _server_tasks(server), rss_kib()
        objects1 = _gc_objects()
        runs: list[Any] = list(engine.runs)

        print(
            f"\n{CONNECTIONS} abrupt disconnects ({CONCURRENCY} at a time) in {churn_s:.1f} s, "
            f"settled in {settle_s:.2f} s; reached: {dict(reached)}\n"
            f"threads {threads0} -> {threads1} (+{pooled} idle library workers), "
            f"server tasks {tasks0} -> {tasks1}, "
            f"stats {stats}, gc objects {objects0} -> {objects1}\n"
            f"RSS {rss0} KiB -> {rss1} KiB ({(rss1 - rss0) / 1024:+.1f} MiB)"
        )
        assert sum(reached.values()) == CONNECTIONS
        assert reached["audio"] == 2 * CONNECTIONS // len(KINDS)  # every mid-turn one got audio
        assert stats == {"connections": 0, "sessions": 0, "jobs": 0, "tasks": 0}
        assert tasks1 == tasks0
        assert threads1 == threads0
        # the worker cache grows by one engine's slots at most, not with the connections (idle
        # workers of earlier servers in this process may still be waiting to retire)
        assert pooled <= pooled0 + engine.max_concurrency
        assert rss1 - rss0 < RSS_BOUND_KIB
        assert objects1 - objects0 < min(500, CONNECTIONS // 2)  # not one per connection
        assert all(r.finished or r.cancelled or r.closed_early for r in runs)
        assert any(not r.finished for r in runs)  # some turns really were cut mid-chunk
        # and the server still works
        _full_turn(port)
