"""What every server adapter shares besides the core: the timed worker call, the handle's
read-only view and the TCP reset. No protocol decisions live here."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Any

from ._core import EngineJob, ServerCore, ServerOptions, log

__all__ = ["BATCH_SECONDS", "HandleBase", "advance", "linger_zero"]

Step = tuple[list[Any], float, "BaseException | None"]

#: Engine time (seconds) one worker call may spend past its first item: a fast engine hands
#: over many pieces per thread hop, a slow one (or one generating at real time) each piece as
#: soon as it is made.
BATCH_SECONDS = 0.002


def advance(job: EngineJob) -> Step:
    """One worker call: :meth:`EngineJob.advance` until the generator is over, the job is
    cancelled, its items hold ``job.batch_bytes`` of audio or :data:`BATCH_SECONDS` passed;
    ``(items, seconds, error)`` (the core reads no clock, so the engine's time is measured
    here; an engine error comes with what was yielded before it)."""
    limit, token = job.batch_bytes, job.token
    items: list[Any] = []
    audio, error = 0, None
    t0 = time.perf_counter()
    deadline = t0 + BATCH_SECONDS
    try:
        while True:
            item = job.advance()
            if item is None:
                break
            items.append(item)
            if type(item) is bytes:
                audio += len(item)
            if audio >= limit or token.cancelled or time.perf_counter() >= deadline:
                break
    except Exception as exc:
        error = exc
    return items, time.perf_counter() - t0, error


def linger_zero(sock: Any) -> None:
    """Make the next close of ``sock`` a TCP RST (``SO_LINGER`` 0)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class HandleBase:
    """A running server: where it listens and its live counters (every backend)."""

    #: the backend's name ("asyncio", "trio", "anyio", "sync")
    backend = ""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.core = ServerCore(options)
        self.host = ""
        self.port = 0

    def _bound(self, sockname: Any) -> None:
        self.host, self.port = str(sockname[0]), int(sockname[1])
        if self.options.api_key is None:
            log.warning("no API key configured: accepting any key (local development mode)")
        log.info("serving %s (%s, engine %s)", self.url, self.backend,
                 type(self.options.engine).__name__)

    @property
    def url(self) -> str:
        """``ws://host:port`` (append an endpoint path such as ``/ws/tts/stream``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open TCP connections."""
        return len(self.core.connections)

    @property
    def peak_buffered(self) -> int:
        """The most unsent bytes any connection held."""
        return self.core.peak_buffered

    @property
    def draining(self) -> bool:
        return self.core.draining is not None

    def stats(self) -> dict[str, int]:
        """Live counters (see :meth:`ServerCore.stats`); all 0 on an idle server."""
        return self.core.stats()

    @property
    def _idle(self) -> bool:
        return not self.core.connections and not self.core.stats()["tasks"]
