"""The client's I/O limits against hostile servers, on every adapter (real sockets, bounded time):

* ``close()`` keeps the buffer bound (a server streaming audio for a turn whose handle is kept
  must not make the close buffer without limit);
* a server that stops reading cannot hang the client: the keepalive's ping timeout fails the
  connection and ``send_text`` returns (asyncio aborts instead of closing; sync never blocks its
  I/O thread in a write; trio/anyio cancel the pending write), and ``write_timeout`` does the
  same without keepalive;
* the outgoing buffer is capped: a server that floods pings and never reads gets
  :class:`~kugelwire.errors.SendBufferFull`, not an ever-growing pong queue.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kugelwire.errors import KugelwireError, SendBufferFull
from tests.faults._util import RssPeak

from ._hostile import HostileServer
from .conftest import Harness

pytestmark = pytest.mark.timeout(60)

CAP = 256 * 1024
FLOOD_RATE = 2**30  # bytes/s: as fast as the flooding thread can produce audio
SLACK = 96 * 1024  # one socket read of audio past the bound


class Peak:
    """Samples ``probe()`` from a thread (it only reads ints) and keeps the maximum."""

    def __init__(self, probe: Any) -> None:
        self.probe, self.value = probe, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.value = max(self.value, self.probe())
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        return self.value


#: The client's RSS may grow this much at its peak during a memory attack: the documented
#: bounds in play are a few hundred KiB here (``max_buffered_bytes`` / ``max_send_buffer`` at
#: 256 KiB, plus one socket read); the rest is allocator slack. Before the fixes the same
#: attacks grew it by 1.5 GiB (close) and 136 MiB (ping flood).
RSS_BOUND_KIB = 32 * 1024


def test_close_keeps_the_buffer_bound(h: Harness) -> None:
    """``close()`` of a stream whose turn is still referenced, against a server streaming
    audio for it as fast as it can: the buffer bound holds (counted, and in this process's
    peak RSS, sampled every 5 ms), and the close ends at ``close_timeout``."""
    with HostileServer("flood_audio", rate=FLOOD_RATE) as server:

        async def scenario() -> None:
            rss = RssPeak()  # after the imports and the server's start: the attack only
            stream = await h.connect_stream(
                server.url, voice_id=1, max_buffered_bytes=CAP, close_timeout=1.5
            )
            core = stream._core
            peak = Peak(lambda: core.buffered_bytes)
            turn = await stream.send_text("Speak this sentence please.", flush=True)
            await h.sleep(0.3)  # the audio flows; nobody consumes it
            started = time.monotonic()
            await stream.close()
            took = time.monotonic() - started
            highest = peak.stop()
            growth = rss.stop()
            assert highest <= CAP + SLACK, f"{highest} bytes buffered (bound {CAP})"
            assert growth <= RSS_BOUND_KIB, f"RSS peaked {growth} KiB above its baseline"
            assert took < 1.5 + 2.0, f"close() took {took:.1f} s"
            with pytest.raises(KugelwireError):
                await turn.collect()  # what was buffered, then the typed error

        h.run(scenario)
        assert server.sent < 80 * 2**20  # the flood was throttled by flow control


MESSAGE = 65_000  # bytes of one send_text in _stall_sends


def _stall_sends(h: Harness, **options: Any) -> tuple[KugelwireError | None, float, int | None]:
    """send_text in a loop against a server that reads nothing: the error, when it came and
    (sync) the most bytes queued or unwritten at once."""
    with HostileServer("stall") as server:
        result: list[Any] = []

        async def scenario() -> None:
            async with await h.connect_stream(server.url, voice_id=1, **options) as stream:
                driver = stream._driver
                pending = getattr(driver, "_pending", None)  # sync: bytes waiting to be written
                peak = (
                    Peak(lambda: len(pending) + driver.core.unsent_size)
                    if pending is not None else None
                )
                text = "word " * (MESSAGE // 5)  # the socket buffers fill quickly
                started = time.monotonic()
                error = None
                while time.monotonic() - started < 10:
                    try:
                        await stream.send_text(text)
                    except KugelwireError as exc:
                        error = exc
                        break
                result[:] = [error, time.monotonic() - started,
                             None if peak is None else peak.stop()]

        h.run(scenario, timeout=30)
        return result[0], result[1], result[2]


#: The sync client's high-water mark (kugelwire.transports.sync): a command waits while more
#: than this is queued or unwritten.
HIGH_WATER = 8 * 2**20


def test_a_server_that_stops_reading_fails_at_the_ping_timeout(h: Harness) -> None:
    # The ping goes out 0.3 s after the last pong and times out 0.5 s later: about 0.8 s.
    error, took, peak = _stall_sends(
        h, ping_interval=0.3, ping_timeout=0.5, write_timeout=60.0, max_send_buffer=2**30
    )
    assert error is not None, "send_text kept going for 10 s against a server that reads nothing"
    assert took < 3.0, f"the client noticed after {took:.1f} s (ping timeout 0.5 s)"
    if peak is not None:  # the caller waited at the high-water mark; memory stayed bounded
        assert peak <= HIGH_WATER + 2 * MESSAGE, f"{peak} bytes queued (high water {HIGH_WATER})"


def test_write_timeout_without_keepalive(h: Harness) -> None:
    error, took, peak = _stall_sends(
        h, ping_interval=None, write_timeout=0.5, max_send_buffer=2**30
    )
    assert isinstance(error, SendBufferFull), error
    assert took < 3.0, f"the write timeout (0.5 s) fired after {took:.1f} s"
    if peak is not None:
        assert peak <= HIGH_WATER + 2 * MESSAGE, f"{peak} bytes queued (high water {HIGH_WATER})"


def test_outgoing_buffer_is_capped_against_a_ping_flood(h: Harness) -> None:
    with HostileServer("ping_flood") as server:

        async def scenario() -> None:
            async with await h.connect_stream(
                server.url, voice_id=1, max_send_buffer=CAP, write_timeout=1.0,
                ping_interval=None,
            ) as stream:
                driver = stream._driver
                pending = getattr(driver, "_pending", None)  # sync: bytes waiting to be written
                peak = Peak(lambda: len(pending)) if pending is not None else None
                rss = RssPeak()
                started = time.monotonic()
                turn = await stream.send_text("Hello there.", flush=True)
                with pytest.raises(SendBufferFull) as info:
                    await turn.collect()
                took = time.monotonic() - started
                growth = rss.stop()
                if h.name in ("asyncio", "sync"):  # they read on while a write waits: the
                    # cap fires (trio and anyio stop reading until the write completes, so
                    # no pong queue grows there, and the write timeout ends the attack)
                    assert "max_send_buffer" in str(info.value), info.value
                assert took < 15.0, f"the cap fired after {took:.1f} s"
                assert growth <= RSS_BOUND_KIB, f"RSS peaked {growth} KiB above its baseline"
                if peak is not None:
                    highest = peak.stop()
                    assert highest <= CAP + 256 * 1024, highest  # cap + one read's pongs

        h.run(scenario, timeout=30)
