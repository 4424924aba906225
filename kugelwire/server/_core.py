"""The server role's sans-IO core: everything between a socket (or an ASGI connection) and the
message-level sessions, with no sockets, event loops, threads or clocks.

One :class:`ServerCore` per server; one :class:`ConnectionCore` per TCP connection (bytes in,
bytes out) or :class:`MessageConnectionCore` per ASGI WebSocket (text messages in and out). The
core owns routing and auth (through :class:`~kugelwire.protocol.ws.ServerConnection` for bytes,
:meth:`MessageConnectionCore.accept` for ASGI), the engine-job table, flow control, keepalive and
reaping, graceful shutdown (idle connections close with the drain code at once, busy ones after
their turn, newcomers get 1013), ``max_connections`` (HTTP 503) and the HTTP routes.

An adapter drives it with this loop and decides nothing itself::

    conn = core.connect(now)                  # or core.connect_messages(now) for ASGI
    conn.receive_data(data, now)              # b"": the peer closed its end
    sock.send(conn.data_to_send())            # then conn.report_buffered(unsent_bytes)
    conn.action                               # KEEP / CLOSE (after flushing) / ABORT / RESET
    conn.next_deadline() -> conn.handle_timeout(now)
    for job in core.take_jobs():              # engine work, at most ``options.slots`` at once
        item = job.advance()                  # in a worker thread; time it
        core.job_done(job, item, seconds, error, now)   # or batch_done(job, items, ...)
    conn.connection_lost(now)                 # the socket is gone

Every call that can produce output is followed by the adapter flushing ``data_to_send()``,
obeying ``action``, re-arming its timer at ``next_deadline()`` and starting ``take_jobs()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, cast

from ..lint import Linter
from ..protocol.config import VoiceCatalogue
from ..protocol.errors import RemoteProtocolError
from ..protocol.messages import WordTimestamp
from ..protocol.messages import dumps as _frame
from ..protocol.sessions import (
    MultiServerSession,
    ServerLimits,
    StreamServerSession,
    SynthesisCancelled,
    SynthesisRequested,
    TTSServerSession,
)
from ..protocol.sessions import ServerSession as _ServerSession
from ..protocol.ws import AI_GENERATED_HEADER as _AI_HEADER
from ..protocol.ws import (
    MESSAGE_TIMEOUT,
    MULTI_ENDPOINT,
    STREAM_ENDPOINT,
    TTS_ENDPOINT,
    Accepted,
    ConnectionClosed,
    ConnectionState,
    HttpHandler,
    MessageSession,
    Rejected,
    RestHandler,
    ServerConnection,
    authorized,
)
from ..protocol.ws import NOT_FOUND_ERROR as _NOT_FOUND
from ..protocol.ws import UNAUTHORIZED_ERROR as _UNAUTHORIZED
from ..protocol.ws import parse_query as _parse_query
from ..synth._base import CancelToken, Engine, SynthesisItem
from ..synth.tone import ToneEngine
from ._faults import FaultPlan, server_connection
from ._metrics import (
    Metrics,
    connection_closed,
    connection_opened,
    metrics_handler,
    observe,
    request_rejected,
)
from ._playground import lint_handler, playground_handler, playground_handler_for
from ._rest import rest_handler

__all__ = [
    "BUSY_RESPONSE",
    "ConnectionCore",
    "ConnectionFactory",
    "EngineJob",
    "Handshake",
    "MessageConnectionCore",
    "ServerCore",
    "ServerOptions",
    "SocketAction",
    "log",
]

log = logging.getLogger("kugelwire.server")

#: Sent (then the socket is closed) when a connection would exceed ``max_connections``.
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_BINARY = {"error": "Binary frames are not supported; send JSON text frames",
           "error_code": "VALIDATION_ERROR", "code": 400}

_SESSIONS: dict[str, type[_ServerSession]] = {
    TTS_ENDPOINT: TTSServerSession,
    STREAM_ENDPOINT: StreamServerSession,
    MULTI_ENDPOINT: MultiServerSession,
}


_LIMITS = ServerLimits()


def _cli(help: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: offered by ``kugelwire serve`` as a ``--flag`` with this help."""
    return {"help": help, "cli": True, **extra}


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Every server setting, defined once: :func:`kugelwire.server.serve` takes these as keyword
    arguments and ``kugelwire serve`` derives its flags from the fields marked ``cli``."""

    engine: Engine = field(default_factory=ToneEngine)
    #: The key clients must send (None: any key). ``kugelwire serve`` takes it from
    #: ``--api-key``, ``--api-key-file`` or ``KUGELWIRE_API_KEY``.
    api_key: str | None = None
    limits: ServerLimits | None = None
    max_connections: int = field(
        default=10_000, metadata=_cli("open TCP connections at most (then HTTP 503)"))
    max_message_size: int = field(
        default=2**20, metadata=_cli("largest WebSocket message in bytes (then close 1009)"))
    handshake_timeout: float = field(
        default=10.0, metadata=_cli("seconds a client has to send its upgrade request"))
    close_timeout: float = field(
        default=5.0, metadata=_cli("seconds to wait for the close handshake / final flush"))
    write_buffer_limit: int = field(
        default=2**20, metadata=_cli("unsent bytes per connection before its synthesis pauses"))
    auth_failure: Literal["http", "close"] = field(default="http", metadata=_cli(
        "a bad key gets HTTP 401 (http) or is accepted and closed 4001 (close)",
        choices=("http", "close")))
    shutdown_timeout: float = field(
        default=10.0, metadata=_cli("seconds busy connections get on shutdown"))
    http_handler: HttpHandler | None = playground_handler
    #: Ping a connection silent this long (seconds, None: never); a peer that does not answer
    #: within ``ping_timeout`` is closed with 1011 (a dead or half-open peer).
    ping_interval: float | None = field(
        default=20.0, metadata=_cli("seconds of silence before a keepalive ping (none: never)"))
    ping_timeout: float = field(
        default=20.0, metadata=_cli("seconds a ping may go unanswered (then close 1011)"))
    backlog: int = field(default=100, metadata=_cli("the listening socket's accept backlog"))
    #: WebSocket frames of one connection handled per turn of the event loop: the rest of its
    #: input waits (and reading it pauses) for ``frame_burst_pause`` seconds, so a connection
    #: flooding tiny frames yields to everyone else (8 frames / 2 ms: 4,000 frames a second at
    #: most per connection; a large message is always one frame's worth). The pause counts
    #: from the start of the burst, so a burst must take well under the pause: then the loop
    #: goes idle in every pause, which is when the engine's worker threads get the interpreter
    #: lock (a loop that is never idle keeps them waiting for it, for seconds).
    frame_burst: int = field(default=8, metadata=_cli(
        "WebSocket frames of one connection handled per event-loop turn (then it pauses)"))
    #: Characters of client text (buffered, queued or being spoken) plus unsent bytes one
    #: connection may hold; a text frame that would go over it is refused with RATE_LIMITED
    #: (429) and nothing of it applies.
    max_connection_buffer: int = field(default=2**21, metadata=_cli(
        "characters of text + unsent bytes one connection may hold (then RATE_LIMITED)"))
    #: The same, summed over all connections: above it new turns, requests and contexts are
    #: refused with RATE_LIMITED and new connections are closed with 1013; 0: a quarter of
    #: the host's physical memory (see :attr:`budget`).
    memory_budget: int = field(default=0, metadata=_cli(
        "characters of text + unsent bytes all connections may hold before new work is "
        "refused (RATE_LIMITED, close 1013); 0: a quarter of physical memory"))
    frame_burst_pause: float = field(default=0.002, metadata=_cli(
        "seconds a connection that sent a whole burst of frames waits for its next one"))
    #: Seconds a WebSocket message may take from its first byte to its last (then close 1008);
    #: None: no deadline.
    message_timeout: float | None = field(default=MESSAGE_TIMEOUT, metadata=_cli(
        "seconds a started WebSocket message may take to complete (then close 1008; none: "
        "no deadline)"))
    #: Accept what the hosted service refuses (no voice, unknown voice or model) and speak
    #: with defaults; the default is to refuse it exactly as the service does.
    lenient: bool = False
    #: The fault plan applied to every connection (None: a well-behaved server).
    faults: FaultPlan | None = None
    #: Rule checks of client behaviour (:mod:`kugelwire.lint`) on every session, or None.
    lint: Linter | None = None
    #: Prometheus metrics (``GET /metrics``); None: off. Sessions are observed either way
    #: (one log line per error frame).
    metrics: Metrics | None = None
    #: Builds each connection's :class:`ServerConnection` (the one place they are made; fault
    #: injection wraps it). None: :func:`default_connection`.
    connection_factory: ConnectionFactory | None = None

    def __post_init__(self) -> None:
        if self.limits is not None and not isinstance(self.limits, ServerLimits):
            raise TypeError(f"limits must be a ServerLimits (or, to serve(), a dict of its "
                            f"fields), not {type(self.limits).__name__}")
        for name in ("write_buffer_limit", "max_connections", "backlog", "ping_timeout",
                     "frame_burst", "max_connection_buffer",
                     "max_message_size", "close_timeout", "handshake_timeout",
                     "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be positive or None")
        if self.api_key == "":
            raise ValueError("api_key must be a non-empty string or None")
        if self.auth_failure not in ("http", "close"):
            raise ValueError(f"auth_failure must be 'http' or 'close', not {self.auth_failure!r}")
        if self.memory_budget < 0:
            raise ValueError("memory_budget must not be negative (0: automatic)")
        if self.frame_burst_pause < 0:
            raise ValueError("frame_burst_pause must not be negative")
        if int(getattr(self.engine, "max_concurrency", 0)) < 1:
            raise ValueError("engine.max_concurrency must be at least 1")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerOptions:
        """Options from keyword arguments; ``engine=None`` / ``http_handler=None`` keep the
        defaults (the tone engine, the playground). ``lint`` may also be True (the default
        here: a new :class:`~kugelwire.lint.Linter`) or False, ``faults`` any fault specs
        (strings, :class:`Fault` s or a plan), ``limits`` a dict of
        :class:`~kugelwire.protocol.sessions.ServerLimits` fields (as JSON gives them). Unknown
        names are a TypeError."""
        if isinstance(kwargs.get("limits"), dict):
            kwargs["limits"] = ServerLimits(**kwargs["limits"])
        for name in ("engine", "http_handler"):
            if name in kwargs and kwargs[name] is None:
                del kwargs[name]
        lint = kwargs.pop("lint", True)
        linter = Linter() if lint is True else (lint or None)
        plan = FaultPlan.parse(kwargs.pop("faults", None))
        if "http_handler" not in kwargs:
            base = playground_handler_for(plan) if plan else playground_handler
            kwargs["http_handler"] = base if linter is None else lint_handler(linter, base)
        metrics = kwargs.pop("metrics", False)
        registry = Metrics() if metrics is True else (metrics or None)
        if registry is not None:  # GET /metrics in front of the playground / the given handler
            kwargs["http_handler"] = metrics_handler(registry, kwargs["http_handler"])
        return cls(lint=linter, faults=plan if plan else None, metrics=registry, **kwargs)

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field[Any]]:
        """The fields ``kugelwire serve`` offers as ``--flag`` (name, default, help, choices)."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]

    @property
    def budget(self) -> int:
        """:attr:`memory_budget` in bytes (0: a quarter of physical memory, else 1 GiB)."""
        if self.memory_budget:
            return self.memory_budget
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            return 2**30

    @property
    def slots(self) -> int:
        """Engine calls allowed at once (the engine's own limit, capped at 64 threads)."""
        return max(1, min(int(self.engine.max_concurrency), 64))

    @property
    def inline(self) -> bool:
        """The engine's steps are quick and never block (its ``inline`` attribute): an adapter
        may advance its jobs on the event loop instead of in a worker thread."""
        return getattr(self.engine, "inline", False) is True

    @property
    def catalogue(self) -> VoiceCatalogue | None:
        """The engine's voices (None when the engine has no catalogue: any voice id)."""
        voices = getattr(self.engine, "voices", None)
        return voices if isinstance(voices, VoiceCatalogue) else None

    def rest_handler(self) -> RestHandler | None:
        """``GET /v1/voices``, ``/v1/voices/{id}``, ``/v1/models`` (with a catalogue)."""
        catalogue = self.catalogue
        return None if catalogue is None else rest_handler(catalogue)

    def new_session(
        self, path: str, now: float | None = None,
        admission: Callable[[int, bool, str | None], None] | None = None,
    ) -> _ServerSession | None:
        """The core session for an endpoint path accepted at ``now``, or None (404): the one
        place sessions are created.

        With :attr:`lint` the session is wrapped in a :class:`~kugelwire.lint.LintedSession`
        (same interface, every call forwarded); ``now`` lets it time the first text."""
        cls = _SESSIONS.get(path)
        if cls is None:
            return None
        session: _ServerSession = cls(
            limits=self.limits, catalogue=self.catalogue, lenient=self.lenient)
        session.admission = admission
        if self.lint is not None:
            # the wrapper has the session's whole interface (it forwards every attribute)
            session = cast(_ServerSession, self.lint.wrap(session, path, now))
        # observed for metrics and error log lines (also a transparent wrapper)
        return cast(_ServerSession, observe(session, path, self.metrics))


ConnectionFactory = Callable[
    ["ConnectionCore", Callable[[str], MessageSession | None], float], ServerConnection
]


def default_connection(
    core: ConnectionCore, route: Callable[[str], MessageSession | None], now: float
) -> ServerConnection:
    """The byte-level connection for ``core`` as the options say."""
    o = core.server.options
    return server_connection(
        route, faults=o.faults, rest_handler=o.rest_handler(), api_key=o.api_key, now=now,
        max_message_size=o.max_message_size, handshake_timeout=o.handshake_timeout,
        close_timeout=o.close_timeout, auth_failure=o.auth_failure, http_handler=o.http_handler,
        keepalive_interval=o.ping_interval, ping_timeout=o.ping_timeout,
        message_timeout=o.message_timeout,
    )


class SocketAction(Enum):
    """What the adapter must do with the socket now."""

    KEEP = "keep"  # keep pumping
    CLOSE = "close"  # write what data_to_send() returns, then close (FIN)
    ABORT = "abort"  # drop it now, unsent bytes discarded
    RESET = "reset"  # drop it with a TCP RST (SO_LINGER 0)


class EngineJob:
    """One :class:`SynthesisRequested` on the engine: a generator the adapter advances in a
    worker thread (:meth:`advance`, one call at a time per job).

    One worker call may advance it several times (see :attr:`batch_bytes`): its items then
    reach :meth:`ServerCore.job_done` together, in order, so a fast engine costs few thread
    hops per chunk."""

    __slots__ = ("_engine", "_gen", "_later", "batch_bytes", "busy", "closing", "done",
                 "frame_bytes", "gen_s", "peer", "request", "rest", "sent_audio", "token")

    def __init__(self, peer: _Peer, request: SynthesisRequested) -> None:
        self.peer = peer
        options = peer.server.options
        self._engine = options.engine
        self.request = request
        self.token = CancelToken()
        self._gen: Iterator[SynthesisItem] | None = None
        self.gen_s = 0.0  # time spent inside the engine, as the adapter measured it
        self.done = False
        self.busy = False  # a worker thread is inside advance()
        self.closing = False  # waiting for a worker to close its generator
        #: PCM bytes one worker call may collect before it hands its items over: a frame's
        #: worth on the first call (the chunk's first audio goes out as soon as it is made),
        #: then an eighth of ``write_buffer_limit`` (flow control overshoots by little)
        frame_ms = (options.limits or _LIMITS).frame_ms
        self.frame_bytes = max(1, request.params.sample_rate * frame_ms // 1000) * 2
        self.batch_bytes = self.frame_bytes
        self._later = max(self.batch_bytes, options.write_buffer_limit // 8)
        #: what a worker call handed over and is not sent yet (see ServerCore._emit): the
        #: items left (the first one from ``rest[0]``'s offset), the engine's error, whether
        #: the generator is exhausted
        self.rest: tuple[deque[SynthesisItem], int, BaseException | None, bool] | None = None
        self.sent_audio = False  # a frame of this chunk has gone out

    @property
    def step_bytes(self) -> int:
        """The longest piece sent in one step (see ServerCore._emit): whole frames up to an
        eighth of ``write_buffer_limit``."""
        return max(self.frame_bytes, self._later - self._later % self.frame_bytes)

    def advance(self) -> SynthesisItem | None:
        """The next item; None when exhausted. Once cancelled it closes the generator instead
        (runs its ``finally`` blocks). Worker thread."""
        if self.token.cancelled:
            gen, self._gen = self._gen, None
            self.done = True
            if gen is not None and hasattr(gen, "close"):
                gen.close()
            return None
        if self._gen is None:
            req = self.request
            self._gen = iter(self._engine.synthesize(req.chunk, req.params, self.token))
            self.batch_bytes = self._later  # from the next worker call on
        try:
            return next(self._gen)
        except StopIteration:
            self.done = True
            return None

    @property
    def needs_close(self) -> bool:
        return self._gen is not None and not self.done


class ServerCore:
    """Server-wide state: options, connections, draining and the engine-job scheduler.

    :meth:`take_jobs` is the single scheduling point: cancelled generators are closed first,
    then ready jobs are taken round-robin across connections (one job per connection per turn
    of the ring), only from connections whose unsent bytes are under ``write_buffer_limit``.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.connections: set[_Peer] = set()
        self.draining: int | None = None
        #: The most unsent bytes any connection held.
        self.peak_buffered = 0
        self._ring: deque[_Peer] = deque()
        self._overflow: deque[_Peer] = deque()  # connections over their share of slots
        self._closing: deque[EngineJob] = deque()
        self._busy = 0
        self._sessions = 0
        self._jobs = 0
        self._factory = options.connection_factory or default_connection
        #: characters of client text + unsent bytes held by all connections
        self.memory = 0
        self._budget = options.budget

    # -- connections -----------------------------------------------------------------------
    def connect(self, now: float) -> ConnectionCore:
        """A new TCP connection (refused with 503 beyond ``max_connections``)."""
        return ConnectionCore(self, now)

    def connect_messages(self, now: float) -> MessageConnectionCore:
        """A new ASGI WebSocket connection."""
        return MessageConnectionCore(self, now)

    def shutdown(self, code: int, now: float) -> None:
        """Start draining: idle connections close with ``code`` now, busy ones after their turn,
        new ones are closed with 1013. The adapter then waits for :attr:`connections` to empty
        (bounded by ``shutdown_timeout``) and calls :meth:`abort_all`."""
        if self.draining is None:
            self.draining = code
            log.info("shutting down (close code %d, %d connections)", code,
                     len(self.connections))
            for peer in list(self.connections):
                peer.shutdown(code, now)

    def abort_all(self) -> None:
        """Drop every connection still open (the shutdown timeout passed)."""
        for peer in list(self.connections):
            peer.abort()

    def stats(self) -> dict[str, int]:
        """Open ``connections``, accepted ``sessions`` among them, engine ``jobs`` in flight
        (active syntheses) and engine ``tasks`` (worker calls running or generators waiting to
        be closed). All are 0 on an idle server. Safe to read from any thread."""
        return {"connections": len(self.connections), "sessions": self._sessions,
                "jobs": self._jobs, "tasks": self._busy + len(self._closing)}

    # -- the engine-job scheduler ----------------------------------------------------------
    def take_jobs(self) -> list[EngineJob]:
        """Jobs to advance now, one worker call each (marks them busy).

        A connection's fair share is ``ceil(slots / connections waiting)``; one that already
        has that many jobs in workers moves to the overflow queue, served only when no
        connection under its share is waiting (so no slot idles while work is ready). Within
        a connection, each context has at most one job and a job goes to the back of its
        connection's queue after every step, so contexts take turns too."""
        out: list[EngineJob] = []
        limit = self.options.write_buffer_limit
        slots = self.options.slots
        ring, overflow = self._ring, self._overflow
        while self._busy < slots:
            if self._closing:
                job = self._closing.popleft()
                job.closing = False
            elif ring or overflow:
                from_ring = bool(ring)
                peer = ring.popleft() if from_ring else overflow.popleft()
                peer._in_ring = False
                if peer.lost or not peer._ready or peer.unsent >= limit:
                    continue
                waiting = len(ring) + len(overflow) + 1
                if from_ring and peer.outstanding >= -(-slots // waiting):
                    peer._in_ring = True  # over its share: after everyone under theirs
                    overflow.append(peer)
                    continue
                job = peer._ready.popleft()
                peer.outstanding += 1
                peer._offer()  # the rest of its jobs wait behind the other connections
            else:
                break
            job.busy = True
            self._busy += 1
            out.append(job)
        return out

    def job_done(
        self,
        job: EngineJob,
        item: SynthesisItem | None,
        seconds: float,
        error: BaseException | None,
        now: float,
    ) -> None:
        """A worker call of :meth:`EngineJob.advance` returned ``item`` (None: exhausted; or
        raised ``error``) after ``seconds`` inside the engine."""
        self._finish(job, () if item is None else (item,), seconds, error, item is None, now)

    def batch_done(
        self,
        job: EngineJob,
        items: Sequence[SynthesisItem],
        seconds: float,
        error: BaseException | None,
        now: float,
    ) -> None:
        """A worker call advanced ``job`` several times (see :attr:`EngineJob.batch_bytes`):
        ``items`` in order (then ``error``, if the engine raised), ``seconds`` inside the
        engine; the generator is exhausted when :attr:`EngineJob.done`. The session gets the
        items exactly as from one :meth:`job_done` each."""
        self._finish(job, items, seconds, error, job.done, now)

    def _finish(
        self,
        job: EngineJob,
        items: Sequence[SynthesisItem],
        seconds: float,
        error: BaseException | None,
        done: bool,
        now: float,
    ) -> None:
        self._busy -= 1
        job.busy = False
        job.gen_s += seconds
        peer = job.peer
        peer.outstanding -= 1
        session = peer.session
        if job.token.cancelled or peer.lost or session is None:
            self._retire(job)
            return
        self._emit(job, deque(items), 0, error, done, now)

    def _emit(
        self,
        job: EngineJob,
        items: deque[SynthesisItem],
        offset: int,
        error: BaseException | None,
        done: bool,
        now: float,
    ) -> None:
        """Send ``items`` (the first from ``offset``) to the session. A piece longer than
        :attr:`EngineJob.step_bytes` goes out in steps, cut at frame boundaries (the frames are
        the ones it makes whole): the chunk's first frame alone, then ``step_bytes`` at a
        time; the rest waits for the connection's next step (its deadline is now), so the
        adapter writes what one step made before the next is framed (a long piece's first
        frames are on their way at once) and serves other connections in between. Then the
        chunk's end, or back to the engine."""
        peer = job.peer
        session = peer.session
        assert session is not None
        ref = job.request.ref
        step = job.step_bytes
        keep = True
        while items:
            item = items[0]
            if isinstance(item, WordTimestamp):
                items.popleft()
                keep = session.send_word_timestamps(ref, (item,), now)
            elif len(item) - offset > step and not len(item) % 2:
                cut = step if job.sent_audio else job.frame_bytes
                job.sent_audio = True
                if session.send_audio(ref, item[offset : offset + cut], now):
                    job.rest = (items, offset + cut, error, done)
                    peer._emitting.append(job)
                    peer._emit_at = now
                    peer._pump(now)
                    return
                keep = False
            else:
                items.popleft()
                job.sent_audio = True
                keep = session.send_audio(ref, item[offset:] if offset else item, now)
                offset = 0
            if not keep:
                break
        if keep and error is not None:
            log.error("engine failed on chunk %s", ref, exc_info=error)
            session.fail_chunk(ref, "Audio generation failed", now)
            keep = False
        elif keep and done:
            session.complete_chunk(ref, job.gen_s * 1000, now)
            keep = False
        if keep:
            peer._ready.append(job)
        else:
            peer._forget(job)
        peer._pump(now)

    def _resume(self, peer: _Peer, now: float) -> None:
        """The next step of the pieces ``peer`` has not sent in full (see :meth:`_emit`)."""
        emitting, peer._emitting = peer._emitting, deque()
        peer._emit_at = None
        for job in emitting:
            rest, job.rest = job.rest, None
            if rest is None:
                continue
            if job.token.cancelled or peer.lost or peer.session is None:
                self._retire(job)
                continue
            self._emit(job, *rest, now)
        if emitting and not peer.lost:
            peer._offer()

    def _cancel(self, job: EngineJob) -> None:
        self._jobs -= 1
        self._retire(job)

    def _retire(self, job: EngineJob) -> None:
        """A job that will not be advanced again: close its generator in a worker (if it was
        started), else it is gone."""
        job.token.cancel()
        if not job.busy and not job.closing and job.needs_close:
            job.closing = True
            job.peer.outstanding += 1
            self._closing.append(job)


class _Peer:
    """What both kinds of connection share: the session, its jobs, flow control, lifetime."""

    _in_ring = False
    #: the adapter's object for this connection (the core never looks at it)
    owner: Any = None

    def __init__(self, server: ServerCore, now: float) -> None:
        self.server = server
        self.session: _ServerSession | None = None
        self.lost = False
        self.held = 0  # bytes the adapter took from us and has not written yet
        self._usage = 0  # this connection's part of server.memory
        #: this connection's jobs in a worker or waiting to be closed (0: none outlives it)
        self.outstanding = 0
        self._now = now
        self._jobs: dict[int, EngineJob] = {}
        self._ready: deque[EngineJob] = deque()
        #: jobs with a piece partly sent (see ServerCore._emit) and when the next step is due
        self._emitting: deque[EngineJob] = deque()
        self._emit_at: float | None = None
        server.connections.add(self)
        #: the peer's address for log lines (the adapter may set it; the core never reads it)
        self.peer = "?"
        self._opened_at = now
        self._closed: tuple[int | None, str] = (None, "connection lost")
        connection_opened(server.options.metrics, self.peer, now)

    @property
    def unsent(self) -> int:
        return self.held

    def report_buffered(self, size: int) -> None:
        """The adapter holds ``size`` bytes it has not written to the socket yet."""
        self.held = size
        server = self.server
        server.peak_buffered = max(server.peak_buffered, self.unsent)
        self._account()
        self._offer()

    def _held(self) -> int:
        session = self.session
        return self.unsent + (session.held_chars() if session is not None else 0)

    def _account(self) -> None:
        """Bring this connection's part of the server's memory count up to date."""
        usage = 0 if self.lost else self._held()
        self.server.memory += usage - self._usage
        self._usage = usage

    def _admit(self, chars: int, new: bool, context_id: str | None) -> None:
        """The session's admission check of a text frame (the memory caps)."""
        server, options = self.server, self.server.options
        usage = self._held()
        if usage + chars > options.max_connection_buffer:
            raise RemoteProtocolError(
                f"text: this connection already holds {usage} characters of text and unsent "
                f"audio (at most {options.max_connection_buffer}); read the audio first",
                field="text", error_code="RATE_LIMITED", code=429, context_id=context_id)
        if new and server.memory - self._usage + usage + chars > server._budget:
            raise RemoteProtocolError(
                "Server busy: its memory budget is reached; try again later",
                error_code="RATE_LIMITED", code=429, context_id=context_id)

    def shutdown(self, code: int, now: float) -> None:
        if self.session is not None and not self.lost:
            self._now = now
            self.session.shutdown(now, code)
            self._pump(now)

    def abort(self, reset: bool = False) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _pump(self, now: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _route(self, path: str) -> _ServerSession | None:
        server = self.server
        session = server.options.new_session(path, self._now, self._admit)
        if session is not None and server.draining is not None:
            session.shutdown(self._now, 1013)  # a draining replica: accept, then close 1013
        elif session is not None and server.memory > server._budget:
            log.warning("closing a new connection 1013: the memory budget is reached")
            session.shutdown(self._now, 1013)  # over the memory budget: try again later
        return session

    def _accepted(self, session: _ServerSession) -> None:
        self.session = session
        self.server._sessions += 1

    def _dispatch(self) -> None:
        """The session's engine events: new jobs queue up, cancelled ones are stopped."""
        session = self.session
        if session is None:
            return
        server = self.server
        for event in session.events():
            serial = event.ref.serial
            if isinstance(event, SynthesisCancelled):
                job = self._jobs.pop(serial, None)
                if job is not None:
                    if job in self._ready:
                        self._ready.remove(job)
                    server._cancel(job)
            else:
                job = EngineJob(self, event)
                self._jobs[serial] = job
                server._jobs += 1
                self._ready.append(job)
        self._offer()

    def _offer(self) -> None:
        if (self._ready and not self._in_ring and not self.lost
                and self.unsent < self.server.options.write_buffer_limit):
            self._in_ring = True
            self.server._ring.append(self)

    def _forget(self, job: EngineJob) -> None:
        if self._jobs.pop(job.request.ref.serial, None) is not None:
            self.server._jobs -= 1
        self.server._retire(job)

    def _gone(self) -> None:
        """The connection is over: cancel its jobs and leave the server."""
        if self.lost:
            return
        self.lost = True
        server = self.server
        self._ready.clear()
        self._emitting.clear()
        self._emit_at = None
        for job in self._jobs.values():
            server._cancel(job)
        self._jobs.clear()
        if self.session is not None:
            server._sessions -= 1
        server.memory -= self._usage
        self._usage = 0
        server.connections.discard(self)
        code, reason = self._closed
        connection_closed(server.options.metrics, self.peer, self.session, code, reason,
                          self._opened_at, self._now)


class ConnectionCore(_Peer):
    """One TCP connection: bytes in, bytes out, a socket action, a deadline."""

    def __init__(self, server: ServerCore, now: float) -> None:
        super().__init__(server, now)
        self.action = SocketAction.KEEP
        self._out = bytearray()
        self._reap_at: float | None = None
        self.conn: ServerConnection | None = None
        #: input not handled yet (over ``receive_slice``), the peer's EOF behind it, and when
        #: the rest is due (the next turn of the event loop)
        self._backlog = bytearray()
        self._eof = False
        self._resume_at: float | None = None
        if len(server.connections) > server.options.max_connections:
            log.warning("refusing a connection: max_connections reached")
            request_rejected(server.options.metrics, self.peer, 503, "", "busy", now)
            self._out += BUSY_RESPONSE
            self._close(now)
        else:
            self.conn = server._factory(self, self._route, now)
            self._pump(now)

    @property
    def unsent(self) -> int:
        return len(self._out) + self.held

    @property
    def reading(self) -> bool:
        """False while the peer should not be read (it floods us without reading)."""
        return not self._backlog and self.unsent <= 4 * self.server.options.write_buffer_limit

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the socket; ``b""``: the peer closed its end. At most ``frame_burst``
        WebSocket frames are handled now; the rest at :meth:`next_deadline`, ``frame_burst_pause``
        later (reading pauses meanwhile), so one connection's flood cannot hold the loop."""
        self._now = now
        if self.conn is not None and not self.lost:
            if data:
                self._backlog += data
            else:
                self._eof = True
            self._feed(now)

    def _feed(self, now: float) -> None:
        conn = self.conn
        assert conn is not None
        if self.action is not SocketAction.KEEP:
            self._backlog.clear()  # closing: the rest of the input is never read
        backlog = self._backlog
        if backlog:
            options = self.server.options
            if conn.state is ConnectionState.CONNECTING:
                size = len(backlog)  # the upgrade request (its size is bounded by the head limit)
            else:
                size = _frames_end(backlog, options.frame_burst)
            if size >= len(backlog):
                piece = bytes(backlog)
                backlog.clear()
            else:
                piece = bytes(backlog[:size])
                del backlog[:size]
            conn.receive_data(piece, now)
        if not backlog and self._eof:
            self._eof = False
            conn.receive_data(b"", now)
        # a whole burst was handled: the rest waits, so the loop serves everyone else
        self._resume_at = now + self.server.options.frame_burst_pause + 1e-6 if backlog else None
        self._pump(now)

    def data_to_send(self) -> bytes:
        """Bytes to write now; they count as unsent until :meth:`report_buffered` says
        otherwise."""
        data = bytes(self._out)
        self._out.clear()
        self.held += len(data)
        return data

    def next_deadline(self) -> float | None:
        conn = self.conn
        deadline = None if conn is None or self.lost else conn.next_deadline()
        for resume in (self._resume_at, self._emit_at):
            if resume is not None and not self.lost and (deadline is None or resume < deadline):
                deadline = resume
        if self._reap_at is not None and (deadline is None or self._reap_at < deadline):
            return self._reap_at
        return deadline

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if self._reap_at is not None and now >= self._reap_at:
            # a peer that stopped reading (half-open) would hold the socket forever
            self.abort()
        elif self.conn is not None and not self.lost:
            if self._emit_at is not None and now >= self._emit_at:
                self.server._resume(self, now)
            if self._resume_at is not None and now >= self._resume_at and not self.lost:
                self._feed(now)
            if not self.lost:
                self.conn.handle_timeout(now)
                self._pump(now)

    def abort(self, reset: bool = False) -> None:
        """Drop the socket now (``reset``: with a TCP RST); the adapter obeys :attr:`action`
        and then calls :meth:`connection_lost`."""
        self.action = SocketAction.RESET if reset else SocketAction.ABORT
        self._out.clear()
        self._backlog.clear()
        self._resume_at = None
        self._reap_at = None
        for job in list(self._jobs.values()):
            self._forget(job)
        self._ready.clear()

    def connection_lost(self, now: float) -> None:
        """The socket is closed (EOF, error, or after the adapter closed it). Idempotent."""
        self._now = now
        conn = self.conn
        if conn is not None and conn.state is not ConnectionState.CLOSED and not self.lost:
            conn.receive_data(b"", now)
            self._pump(now)
        self._out.clear()
        self._backlog.clear()
        self._resume_at = None
        if self.action is SocketAction.KEEP or self.action is SocketAction.CLOSE:
            self.action = SocketAction.ABORT
        self._reap_at = None
        self._gone()

    def _close(self, now: float) -> None:
        self.action = SocketAction.CLOSE
        self._reap_at = now + self.server.options.close_timeout

    def _pump(self, now: float) -> None:
        conn = self.conn
        if conn is None or self.lost:
            return
        for event in conn.events():
            if isinstance(event, Accepted):
                self._accepted(event.session)  # type: ignore[arg-type]
                log.debug("accepted %s", event.path)
            elif isinstance(event, Rejected):
                request_rejected(self.server.options.metrics, self.peer, event.status_code,
                                 event.path, event.reason, now)
            elif isinstance(event, ConnectionClosed):
                self._closed = (event.code, event.reason)
        self._dispatch()
        self._account()
        if self.action is SocketAction.KEEP:
            self._out += conn.data_to_send()
            if getattr(conn, "abort_requested", False):
                # a fault plan's drop: what it let through goes out, then a TCP reset
                self.action = SocketAction.RESET
                self._reap_at = None
                for job in list(self._jobs.values()):
                    self._forget(job)
                self._ready.clear()
                return
            if conn.state is ConnectionState.CLOSED:
                for job in list(self._jobs.values()):
                    self._forget(job)
                self._ready.clear()
                self._close(now)


def _frames_end(data: bytes | bytearray, count: int) -> int:
    """The offset just past the first ``count`` WebSocket frames that start ``data`` (its
    length when fewer are there: a frame still arriving counts whole). Only a cut point for
    pacing; the connection itself parses and validates every frame."""
    offset, size = 0, len(data)
    for _ in range(count):
        if offset + 2 > size:
            return size
        length = data[offset + 1] & 0x7F
        head = 2 + (4 if data[offset + 1] & 0x80 else 0)
        if length == 126:
            if offset + 4 > size:
                return size
            length = int.from_bytes(data[offset + 2 : offset + 4], "big")
            head += 2
        elif length == 127:
            if offset + 10 > size:
                return size
            length = int.from_bytes(data[offset + 2 : offset + 10], "big")
            head += 8
        offset += head + length
        if offset >= size:
            return size
    return offset


@dataclass(frozen=True, slots=True)
class Handshake:
    """The answer to an ASGI upgrade: accept (``status`` 101) or deny with an HTTP response."""

    status: int
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""

    @property
    def accepted(self) -> bool:
        return self.status == 101

    def with_length(self) -> list[tuple[bytes, bytes]]:
        """The headers, with ``content-length`` added when missing."""
        headers = list(self.headers)
        if not any(name.lower() == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(self.body)).encode("ascii")))
        return headers


def http_response(
    handler: HttpHandler | None,
    method: str,
    path: str,
    *,
    options: ServerOptions | None = None,
    query: str = "",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> Handshake:
    """The answer to a plain HTTP request: with ``options``, the REST routes under ``/v1/``
    (the sockets' auth); the playground; 404 / 405 otherwise."""
    if method not in ("GET", "HEAD"):
        return Handshake(405, [(b"allow", b"GET, HEAD")])
    rest = None if options is None or not path.startswith("/v1/") else options.rest_handler()
    if rest is not None and options is not None:
        key = options.api_key.encode() if options.api_key is not None else None
        if not authorized(key, query, headers, x_api_key=True):
            return Handshake(401, [(b"content-type", b"application/json")],
                             _frame(_UNAUTHORIZED).encode())
        return _answer(method, rest(path, query))
    return _answer(method, handler(path) if handler is not None else None)


def _answer(
    method: str, response: tuple[int, list[tuple[bytes, bytes]], bytes] | None
) -> Handshake:
    """A route's answer (None: 404); a HEAD request gets its headers without the body."""
    if response is None:
        return Handshake(404, [(b"content-type", b"application/json")],
                         _frame(_NOT_FOUND).encode())
    status, headers, body = response
    if method == "HEAD":
        return Handshake(status, Handshake(status, headers, body).with_length())
    return Handshake(status, headers, body)


class MessageConnectionCore(_Peer):
    """One ASGI WebSocket: the scope's path/query/headers, then text messages both ways.

    After :meth:`accept`, send :meth:`messages_to_send`; once :attr:`close_code` is set, send
    what is left and close with it. Message sizes and the session's own rules are enforced
    here; framing, pings and the close handshake belong to the ASGI server.
    """

    def __init__(self, server: ServerCore, now: float) -> None:
        super().__init__(server, now)
        self.close_code: int | None = None
        self.request_id = ""  # set when the upgrade is accepted
        self._outbox: list[str] = []

    def accept(self, path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
               now: float, *, denial: bool) -> Handshake:
        """Authorize and route; ``denial``: the server supports HTTP denial responses (else a
        refusal is an accepted socket closed with 4001, or 1013 when the server is full)."""
        self._now = now
        options = self.server.options
        if len(self.server.connections) > options.max_connections:
            request_rejected(options.metrics, self.peer, 503, path, "busy", now)
            if denial:
                self._gone()
                return Handshake(503, [(b"retry-after", b"1")])
            self.close_code = 1013  # no denial response: accept and close "try again later"
            return Handshake(101, [_AI_HEADER])
        key = options.api_key.encode() if options.api_key is not None else None
        if not authorized(key, query, headers):
            request_rejected(options.metrics, self.peer, 401, path, "unauthorized", now)
            if denial and options.auth_failure == "http":
                self._gone()
                return Handshake(401, [(b"content-type", b"application/json")],
                                 _frame(_UNAUTHORIZED).encode())
            self._outbox.append(_frame(_UNAUTHORIZED))
            self.close_code = 4001
            return Handshake(101, [_AI_HEADER])
        session = self._route(path)
        if session is None:
            request_rejected(options.metrics, self.peer, 404, path, "not found", now)
            if denial:
                self._gone()
                return Handshake(404, [(b"content-type", b"application/json")],
                                 _frame(_NOT_FOUND).encode())
            self._outbox.append(_frame(_NOT_FOUND))
            self.close_code = 4001  # no denial response: accept and close
            return Handshake(101, [_AI_HEADER])
        self._accepted(session)
        self.request_id = "req_" + secrets.token_hex(8)  # of every error frame, as over bytes
        bind = getattr(session, "bind_request_id", None)
        if bind is not None:
            bind(self.request_id)
        if path == TTS_ENDPOINT:
            initial = next((v for n, v, _ in _parse_query(query) if n == "initial_message"), "")
            if initial:
                self.receive_text(initial, now)
        self._pump(now)
        return Handshake(101, [_AI_HEADER])

    def receive_text(self, text: str, now: float) -> None:
        self._now = now
        session = self.session
        if session is None or self.lost or self.close_code is not None:
            return
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > self.server.options.max_message_size:
            self.close_code = 1009
            self._pump(now)
            return
        try:
            session.receive_message(text, now)
        except RemoteProtocolError as exc:
            frame: dict[str, Any] = {"error": exc.message, "error_code": exc.error_code,
                                     "code": exc.code}
            if exc.context_id:
                frame["context_id"] = exc.context_id
            self._outbox.extend(session.messages_to_send())
            self._outbox.append(_frame(frame))
        self._pump(now)

    def receive_bytes(self, size: int, now: float) -> None:
        """A binary message (never valid: an error frame; too big: close 1009)."""
        if size > self.server.options.max_message_size:
            self.close_code = 1009
        elif self.session is not None and self.close_code is None:
            self._outbox.append(_frame({**_BINARY, "request_id": self.request_id}))
        self._pump(now)

    @property
    def unsent(self) -> int:
        return self.held + sum(len(m) for m in self._outbox)

    def messages_to_send(self) -> list[str]:
        """The messages to send now; they count as unsent until :meth:`report_buffered` says
        otherwise."""
        out, self._outbox = self._outbox, []
        self.held += sum(len(m) for m in out)
        return out

    def next_deadline(self) -> float | None:
        session = self.session
        if session is None or self.lost:
            return None
        deadline, emit = session.next_deadline(), self._emit_at
        return emit if emit is not None and (deadline is None or emit < deadline) else deadline

    def handle_timeout(self, now: float) -> None:
        self._now = now
        session = self.session
        if self._emit_at is not None and now >= self._emit_at and not self.lost:
            self.server._resume(self, now)
        if session is not None and not self.lost:
            deadline = session.next_deadline()
            if deadline is not None and now >= deadline:
                session.handle_timeout(now)
            self._pump(now)

    def abort(self, reset: bool = False) -> None:
        self.close_code = 1012 if self.close_code is None else self.close_code
        for job in list(self._jobs.values()):
            self._forget(job)
        self._ready.clear()

    def connection_lost(self, code: int | None, now: float) -> None:
        """The WebSocket is gone (the client's close code, or None). Idempotent."""
        if self.session is not None and not self.lost:
            self.session.connection_lost(code, "connection lost", now)
        self._gone()

    def _pump(self, now: float) -> None:
        session = self.session
        if session is None or self.lost:
            return
        self._dispatch()
        self._outbox.extend(session.messages_to_send())
        self._account()
        if self.close_code is None:
            self.close_code = session.close_code
