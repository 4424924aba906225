"""Test helpers: a client session and a server session joined in memory with a fake clock.

Modelled on h11's ``ConnectionPair``: nothing here does I/O or reads a clock. A
:class:`SessionPair` moves JSON messages between a client session and a server session (in
order, as TCP would), answers the server's :class:`SynthesisRequested` events with a
deterministic :class:`PairEngine`, and advances a :class:`FakeClock` on request, firing every
deadline that falls due on the way.

    pair = SessionPair.stream(voice_id=1)
    pair.client.send_text("Hello there. ", pair.now)
    pair.client.flush(pair.now)
    pair.pump()
    events = pair.client_events()

Hypothesis strategies for the inputs (LLM-like token streams with markup and unicode, server
frame sequences, timer steps, network splits) are in :mod:`kugelwire.testing_strategies`,
which needs hypothesis; this module does not. See docs/testing.md.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .protocol.events import ClientEvent
from .protocol.messages import WordTimestamp
from .protocol.sessions import (
    ChunkRef,
    MultiClientSession,
    MultiServerSession,
    ServerLimits,
    StreamClientSession,
    StreamServerSession,
    SynthesisCancelled,
    SynthesisRequested,
    TTSClientSession,
    TTSServerSession,
)
from .protocol.sessions import ClientSession as _ClientSession
from .protocol.sessions import ServerSession as _ServerSession

__all__ = ["DEFAULT_VOICE_ID", "FakeClock", "PairEngine", "SessionPair"]

#: The voice a :class:`SessionPair` client names unless told otherwise (the server, strict like
#: the hosted service, refuses a turn without one).
DEFAULT_VOICE_ID = 1

_WORD = re.compile(r"\S+")
C = TypeVar("C", bound=_ClientSession)


@dataclass
class FakeClock:
    """Monotonic seconds that only move when told to."""

    now: float = 0.0

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now


@dataclass
class _EngineJob:
    request: SynthesisRequested
    pieces: deque[bytes]
    words: list[WordTimestamp]


@dataclass
class PairEngine:
    """A deterministic engine: ``ms_per_char`` of audio per character of chunk text.

    Each chunk's audio is cut into ``pieces`` calls of ``send_audio`` (so tests can barge in
    mid-chunk), followed by its word timestamps (one per whitespace-separated word, timed by
    character offsets) and ``complete_chunk``. With ``auto=True`` the pair runs jobs to the end
    inside :meth:`SessionPair.pump`; otherwise call :meth:`SessionPair.step_engine`.
    """

    ms_per_char: float = 10.0
    pieces: int = 2
    auto: bool = True
    requested: list[SynthesisRequested] = field(default_factory=list)
    cancelled: list[ChunkRef] = field(default_factory=list)
    jobs: deque[_EngineJob] = field(default_factory=deque)
    dropped_calls: int = 0

    def accept(self, event: SynthesisRequested | SynthesisCancelled) -> None:
        if isinstance(event, SynthesisCancelled):
            self.cancelled.append(event.ref)
            self.jobs = deque(j for j in self.jobs if j.request.ref != event.ref)
            return
        self.requested.append(event)
        text = event.chunk.text
        sr = event.params.sample_rate
        per_char = self.ms_per_char / 1000.0
        total = max(1, round(len(text) * per_char * sr)) if text.strip() else round(0.05 * sr)
        pcm = _tone(total)
        n = max(1, self.pieces)
        step = -(-total // n)
        pieces = deque(pcm[i * 2 * step : (i + 1) * 2 * step] for i in range(n))
        words = [
            WordTimestamp(
                m.group(),
                m.start() * self.ms_per_char,
                m.end() * self.ms_per_char,
                m.start(),
                m.end(),
            )
            for m in _WORD.finditer(text)
        ]
        self.jobs.append(_EngineJob(event, deque(p for p in pieces if p), words))

    def step(self, server: _ServerSession, now: float) -> bool:
        """Deliver one piece (or the completion) of the oldest job. False when idle."""
        if not self.jobs:
            return False
        job = self.jobs[0]
        ref = job.request.ref
        if job.pieces:
            if not server.send_audio(ref, job.pieces.popleft(), now):
                self.dropped_calls += 1
                self.jobs.popleft()
            return True
        self.jobs.popleft()
        server.send_word_timestamps(ref, job.words, now)
        if not server.complete_chunk(ref, 1.0, now):
            self.dropped_calls += 1
        return True


def _tone(samples: int) -> bytes:
    # A square wave at a quarter of full scale: deterministic and non-silent.
    hi = (8192).to_bytes(2, "little", signed=True)
    lo = (-8192).to_bytes(2, "little", signed=True)
    return b"".join(hi if (i // 20) % 2 == 0 else lo for i in range(samples))


class SessionPair(Generic[C]):
    """A client session and a server session joined in memory, with a fake clock."""

    def __init__(
        self,
        client: C,
        server: _ServerSession,
        *,
        engine: PairEngine | None = None,
        clock: FakeClock | None = None,
        collect_events: bool = True,
    ) -> None:
        self.client = client
        #: With ``collect_events=False`` the pair never drains the client's events, so code
        #: under test (an SDK built on the session) reads them itself; ``client_events()``
        #: then only returns what was collected before.
        self.collect_events = collect_events
        self.server = server
        self.engine = engine or PairEngine()
        self.clock = clock or FakeClock()
        self.to_server: deque[str] = deque()
        self.to_client: deque[str] = deque()
        self.sent: list[str] = []  # every client message, in order
        self.received: list[str] = []  # every server message, in order
        self.events: list[ClientEvent] = []
        self.close_code: int | None = None

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def stream(
        cls,
        *,
        limits: ServerLimits | None = None,
        engine: PairEngine | None = None,
        collect_events: bool = True,
        client_kwargs: dict[str, Any] | None = None,
        **config: Any,
    ) -> SessionPair[StreamClientSession]:
        server = StreamServerSession(limits=limits)
        return _joined(
            StreamClientSession, server, engine, collect_events, client_kwargs, config
        )

    @classmethod
    def multi(
        cls,
        *,
        limits: ServerLimits | None = None,
        engine: PairEngine | None = None,
        collect_events: bool = True,
        client_kwargs: dict[str, Any] | None = None,
        **config: Any,
    ) -> SessionPair[MultiClientSession]:
        server = MultiServerSession(limits=limits)
        return _joined(
            MultiClientSession, server, engine, collect_events, client_kwargs, config
        )

    @classmethod
    def tts(
        cls,
        *,
        limits: ServerLimits | None = None,
        engine: PairEngine | None = None,
        collect_events: bool = True,
        client_kwargs: dict[str, Any] | None = None,
        **config: Any,
    ) -> SessionPair[TTSClientSession]:
        server = TTSServerSession(limits=limits)
        return _joined(
            TTSClientSession, server, engine, collect_events, client_kwargs, config
        )

    # -- moving things ---------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now

    def transfer(self) -> None:
        """Move both outboxes onto the wire queues (nothing is delivered yet)."""
        for msg in self.client.messages_to_send():
            self.sent.append(msg)
            self.to_server.append(msg)
        for msg in self.server.messages_to_send():
            self.received.append(msg)
            self.to_client.append(msg)
        for ev in self.server.events():
            self.engine.accept(ev)
        if self.server.close_code is not None and self.close_code is None and not self.to_client:
            self.close_code = self.server.close_code

    def deliver_to_server(self, n: int | None = None) -> int:
        self.transfer()
        count = 0
        while self.to_server and (n is None or count < n):
            self.server.receive_message(self.to_server.popleft(), self.now)
            count += 1
            self.transfer()
        return count

    def deliver_to_client(self, n: int | None = None) -> int:
        self.transfer()
        count = 0
        while self.to_client and (n is None or count < n):
            self.client.receive_message(self.to_client.popleft(), self.now)
            count += 1
            self._collect()
        self.transfer()
        if self.close_code is not None and not self.to_client and not self.client.terminated:
            self.client.connection_lost(self.close_code, "", self.now)
            self._collect()
        return count

    def step_engine(self) -> bool:
        self.transfer()
        progressed = self.engine.step(self.server, self.now)
        self.transfer()
        return progressed

    def pump(self, *, engine: bool | None = None, limit: int = 100_000) -> None:
        """Deliver everything both ways and (if the engine is auto) run it, until quiet."""
        run_engine = self.engine.auto if engine is None else engine
        for _ in range(limit):
            moved = self.deliver_to_server() + self.deliver_to_client()
            if run_engine and self.step_engine():
                continue
            if not moved:
                return
        raise RuntimeError("pump did not settle")

    def advance(self, seconds: float, *, pump: bool = True) -> None:
        """Move the clock, firing every deadline of either side that falls due on the way."""
        target = self.clock.now + seconds
        stuck = 0
        while True:
            deadlines = [
                d
                for d in (self.client.next_deadline(), self.server.next_deadline())
                if d is not None and d <= target
            ]
            if not deadlines:
                break
            due = max(self.clock.now, min(deadlines))
            stuck = stuck + 1 if due == self.clock.now else 0
            if stuck > 1000:
                # A deadline that handle_timeout(now) does not consume would make a transport
                # spin: report it instead of hanging.
                raise RuntimeError(
                    f"deadline {due} is not consumed by handle_timeout (client "
                    f"{self.client.next_deadline()}, server {self.server.next_deadline()})"
                )
            self.clock.now = due
            self.client.handle_timeout(due)
            self.server.handle_timeout(due)
            if pump:
                self.pump()
            else:
                self.transfer()
        self.clock.now = target
        if pump:
            self.pump()

    def _collect(self) -> None:
        if self.collect_events:
            self.events.extend(self.client.events())

    def client_events(self) -> list[ClientEvent]:
        """Every client event so far (kept; call repeatedly)."""
        self._collect()
        return list(self.events)

    def events_of(self, kind: type[Any] | tuple[type[Any], ...]) -> list[Any]:
        return [e for e in self.client_events() if isinstance(e, kind)]


_P = TypeVar("_P", bound=_ClientSession)


def _joined(
    client_type: type[_P],
    server: _ServerSession,
    engine: PairEngine | None,
    collect_events: bool,
    client_kwargs: dict[str, Any] | None,
    config: dict[str, Any],
) -> SessionPair[_P]:
    """The pair of a new ``client_type`` session (``config`` with a voice) and ``server``."""
    config.setdefault("voice_id", DEFAULT_VOICE_ID)  # the server requires a voice
    client = client_type(**(client_kwargs or {}), **config)
    return SessionPair(client, server, engine=engine, collect_events=collect_events)
