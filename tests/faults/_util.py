"""Helpers for the fault, limit, leak and security tests: raw sockets, subprocess servers, RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_T = TypeVar("_T")


def must(value: _T | None) -> _T:
    """``value``, asserting it is not None (``send_text(..., flush=True)`` always has a turn)."""
    assert value is not None
    return value


def run(coro: Callable[[], Awaitable[None]], timeout: float = 15.0) -> None:
    """Run ``coro()`` on a fresh event loop, bounded by ``timeout`` seconds."""

    async def main() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(main())


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll ``cond`` until it holds; ``TimeoutError`` (naming nothing) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(step)


def rss_kib() -> int:
    """This process's resident set size (``VmRSS``) in KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- raw WebSocket bytes --------------------------------------------------------------------------
def upgrade_request(path: str, *, key: str | None = None, host: str = "127.0.0.1") -> bytes:
    target = path if key is None else f"{path}?api_key={key}"
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (zero mask: the payload bytes stay readable in captures)."""
    n = len(payload)
    head = bytearray([0x80 | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes(head) + b"\0\0\0\0" + payload


def text_frame(obj: dict[str, Any]) -> bytes:
    return client_frame(json.dumps(obj).encode())


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete unmasked server frames in ``data`` as ``(opcode, payload)``, and the rest."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(data) - pos < 4:
                break
            (n,) = struct.unpack("!H", data[pos + 2 : pos + 4])
            head = 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            (n,) = struct.unpack("!Q", data[pos + 2 : pos + 10])
            head = 10
        if len(data) - pos < head + n:
            break
        out.append((b0 & 0x0F, data[pos + head : pos + head + n]))
        pos += head + n
    return out, data[pos:]


def abort_socket(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, no FIN, no close frame."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- a server in another process ------------------------------------------------------------------
_SERVER_SCRIPT = """
import asyncio, sys
from kugelwire.server import serve
from kugelwire.synth import ToneEngine

async def main():
    engine = ToneEngine(piece_ms=20, realtime_factor=float(sys.argv[1]))
    async with serve("127.0.0.1", 0, engine=engine, api_key=sys.argv[2]) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.contextmanager
def server_process(api_key: str, realtime_factor: float = 1.0) -> Iterator[tuple[int, int]]:
    """A kugelwire server in a child process: yields ``(port, pid)``; killed on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(realtime_factor), api_key],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process did not start")
        yield int(line), proc.pid
    finally:
        proc.kill()
        proc.wait(5)


def rss_of(pid: int | None = None) -> int:
    """``VmRSS`` in KiB of process ``pid`` (default: this process)."""
    path = "/proc/self/status" if pid is None else f"/proc/{pid}/status"
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in {path}")


def _trim() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``), so memory an earlier
    test freed is not silently reused by the next attack without its RSS growing."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class RssPeak:
    """The peak RSS of a process while an attack runs, sampled every 5 ms in a thread.

    ``baseline`` is taken when the sampler starts (start it after a warm-up; for this process
    after handing freed heap memory back, see :func:`_trim`); ``stop()``
    returns the growth of the peak over it in KiB, so a short spike between two end readings
    still counts."""

    def __init__(self, pid: int | None = None) -> None:
        import threading

        self.pid = pid
        if pid is None:
            _trim()
        self.baseline = rss_of(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):  # the process may be gone
                self.peak = max(self.peak, rss_of(self.pid))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError, RuntimeError):
            self.peak = max(self.peak, rss_of(self.pid))
        return self.peak - self.baseline

    def __enter__(self) -> RssPeak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
