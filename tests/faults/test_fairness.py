"""Fairness and memory on the server (real sockets on 127.0.0.1, every backend): one tenant must
not starve the others, and memory stays under the documented budgets.

- a connection flooding tiny ``{}`` frames yields to others (another client's turn < 1 s);
- one connection with 20 busy contexts does not take every engine slot ahead of another
  connection's single turn;
- a per-connection cap on buffered text + unsent audio (``RATE_LIMITED``, nothing accepted lost);
- a global memory budget: new turns / contexts are refused with ``RATE_LIMITED`` and new
  connections closed with 1013 while it is exceeded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.faults._util import client_frame
from tests.faults.test_hostile_peer import KEY, Bystander, _open

pytestmark = pytest.mark.timeout(90)

BACKENDS = ["asyncio", "trio", "anyio", "sync"]


_CHILD = """
import sys, time
from kugelwire.server import run_in_thread
from kugelwire.synth import ToneEngine
with run_in_thread(backend=sys.argv[1], api_key=sys.argv[2],
                   engine=ToneEngine(piece_ms=20)) as server:
    print(server.port, flush=True)
    time.sleep(120)
"""


class _Child:
    """A server of ``backend`` in a child process (its own interpreter lock, like a real
    deployment), with ``url`` and ``port`` like a handle."""

    def __init__(self, backend: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, backend, KEY], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process did not start")
        self.port = int(line)
        self.url = f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(5)


class _Drain:
    """Reads (and discards, counting frames) everything a raw socket receives, in a thread."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.data = bytearray(rest)
        self.bytes = len(rest)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.bytes += len(chunk)

    def join(self) -> None:
        self._thread.join(5)


@pytest.mark.parametrize("backend", ["asyncio", "sync", "trio"])
def test_tiny_frame_flood_does_not_starve_another_turn(backend: str) -> None:
    """One connection sending 8-byte ``{}`` frames as fast as it can (the attack
    sent 1.4 M in 20 s) made every other turn take ~6 s. The core now handles a bounded number
    of frames (``frame_burst``) per turn of its loop and pauses that connection for
    ``frame_burst_pause``, so another client's turns stay under 1 s during the flood (the
    server runs in a child process: its own interpreter lock, as deployed)."""
    tiny = client_frame(b"{}", opcode=0x1)
    burst = tiny * 8192  # 64 KiB
    if backend == "trio":
        pytest.importorskip("trio")
    with _Child(backend) as server, Bystander(server.url) as bystander:
        sock, rest = _open(server.port)
        sock.settimeout(10)  # the drain's reads and the flood's writes alike
        drain = _Drain(sock, rest)
        sent = 0
        start = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - start < 4.0:
                sock.sendall(burst)
                sent += 8192
        end = time.monotonic()
        with contextlib.suppress(OSError):
            sock.close()
        drain.join()
        time.sleep(0.3)
        print(f"flood: {sent} frames in {end - start:.1f} s; bystander turns "
              f"{len(bystander.latencies)}, max {max(bystander.latencies):.3f} s")
    assert sent > 50_000  # it really flooded
    bystander.check(start, end)
