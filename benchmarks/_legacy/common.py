"""Non-I/O glue shared by the asyncio and trio runners: options, routing, engine jobs.

Nothing here does I/O or decides protocol behaviour: sessions come from the core, the core's
:class:`SynthesisRequested` / :class:`SynthesisCancelled` events become :class:`EngineJob` s,
and what an engine yields is handed back to the session unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from kugelwire.protocol.messages import WordTimestamp
from kugelwire.protocol.sessions import (
    MultiServerSession,
    ServerLimits,
    StreamServerSession,
    SynthesisCancelled,
    SynthesisRequested,
    TTSServerSession,
)
from kugelwire.protocol.sessions import ServerSession as _ServerSession
from kugelwire.protocol.ws import HttpHandler
from kugelwire.synth import CancelToken, Engine, SynthesisItem

__all__ = ["BUSY_RESPONSE", "EngineJob", "JobTable", "ServerOptions", "apply_item", "log"]

log = logging.getLogger("kugelwire.server")

#: Sent (then the socket is closed) when a connection would exceed ``max_connections``.
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)

_SESSIONS: dict[str, type[_ServerSession]] = {
    "/ws/tts": TTSServerSession,
    "/ws/tts/stream": StreamServerSession,
    "/ws/tts/multi": MultiServerSession,
}


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything a runner needs besides host/port (see :func:`kugelwire.server.serve`)."""

    engine: Engine
    api_key: str | None = None
    limits: ServerLimits | None = None
    max_connections: int = 10_000
    max_message_size: int = 2**20
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    write_buffer_limit: int = 2**20
    auth_failure: Literal["http", "close"] = "http"
    shutdown_timeout: float = 10.0
    http_handler: HttpHandler | None = None
    #: Ping a connection silent this long (seconds, None: never); a peer that does not answer
    #: within ``ping_timeout`` is closed with 1011 (a dead or half-open peer).
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.write_buffer_limit <= 0:
            raise ValueError("write_buffer_limit must be positive")
        if self.max_connections <= 0:
            raise ValueError("max_connections must be positive")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be positive or None")
        if self.ping_timeout <= 0:
            raise ValueError("ping_timeout must be positive")
        if int(getattr(self.engine, "max_concurrency", 0)) < 1:
            raise ValueError("engine.max_concurrency must be at least 1")

    @property
    def slots(self) -> int:
        """Engine calls allowed at once (the engine's own limit, capped at 64 threads)."""
        return max(1, min(int(self.engine.max_concurrency), 64))

    def new_session(self, path: str) -> _ServerSession | None:
        """The core session for an endpoint path, or None (404)."""
        cls = _SESSIONS.get(path)
        return None if cls is None else cls(limits=self.limits)


class EngineJob:
    """One :class:`SynthesisRequested` on an engine. :meth:`step` / :meth:`close` run in a
    worker thread (one at a time per job); everything else runs on the event loop."""

    __slots__ = ("_engine", "_gen", "done", "gen_s", "request", "token")

    def __init__(self, engine: Engine, request: SynthesisRequested) -> None:
        self._engine = engine
        self.request = request
        self.token = CancelToken()
        self._gen: Iterator[SynthesisItem] | None = None
        self.gen_s = 0.0  # time spent inside the engine
        self.done = False

    def step(self) -> SynthesisItem | None:
        """Advance the generator once; None when it is exhausted (worker thread)."""
        t0 = time.perf_counter()
        try:
            if self._gen is None:
                req = self.request
                self._gen = iter(self._engine.synthesize(req.chunk, req.params, self.token))
            return next(self._gen)
        except StopIteration:
            self.done = True
            return None
        finally:
            self.gen_s += time.perf_counter() - t0

    @property
    def needs_close(self) -> bool:
        return self._gen is not None and not self.done

    def close(self) -> None:
        """Close an unfinished generator (runs its ``finally`` blocks; worker thread)."""
        gen, self._gen = self._gen, None
        self.done = True
        if gen is not None and hasattr(gen, "close"):
            gen.close()


def apply_item(
    session: _ServerSession, job: EngineJob, item: SynthesisItem | None, now: float
) -> bool:
    """Hand one engine result to the session. False when the job is over (done or dropped)."""
    ref = job.request.ref
    if item is None:
        session.complete_chunk(ref, job.gen_s * 1000, now)
        return False
    if isinstance(item, WordTimestamp):
        return session.send_word_timestamps(ref, (item,), now)
    return session.send_audio(ref, item, now)


class JobTable:
    """The engine jobs of one connection, keyed by the core's chunk serial."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: dict[int, EngineJob] = {}
        #: every job ever started on this connection, for stats
        self.started = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def dispatch(self, session: _ServerSession) -> list[EngineJob]:
        """Drain the session's events: cancel tokens now, return the jobs to start."""
        new: list[EngineJob] = []
        for event in session.events():
            serial = event.ref.serial
            if isinstance(event, SynthesisCancelled):
                job = self._jobs.pop(serial, None)
                if job is not None:
                    job.token.cancel()
            else:
                job = EngineJob(self._engine, event)
                self._jobs[serial] = job
                self.started += 1
                new.append(job)
        return new

    def finished(self, job: EngineJob) -> None:
        self._jobs.pop(job.request.ref.serial, None)

    def cancel_all(self) -> None:
        for job in self._jobs.values():
            job.token.cancel()
        self._jobs.clear()
