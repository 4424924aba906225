"""One piece of work's buffered events, and the figures it carries over reconnects.

An :class:`EventBuffer` queues the events of one turn (stream), request (tts) or context
(multi). Its methods that drop events (:meth:`~EventBuffer.purge`, ...) return what they
removed, ``(events, audio bytes)``, for the client core's totals (which bound all buffers
together). Work replayed on a new connection keeps its buffer: :meth:`~EventBuffer.carry_over`
counts the reconnect, and :meth:`~EventBuffer.stamp` puts the reconnects it survived (and its
first connection's send times) on the metrics of its terminal events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from ..errors import KugelwireError
from ..protocol.events import (
    AudioChunk,
    ChunkComplete,
    ClientEvent,
    ContextClosed,
    GenerationStarted,
    Interrupted,
    RequestFinal,
    TurnClosed,
    TurnFinal,
    TurnMetrics,
    TurnReplay,
    WordTimestamps,
)
from ..protocol.sessions import WorkKey

__all__ = ["EventBuffer", "audio_size", "combined"]

#: The events :meth:`EventBuffer.purge` drops (a work's output).
_OUTPUT = (AudioChunk, GenerationStarted, WordTimestamps, ChunkComplete, TurnFinal)
_M = TypeVar("_M", bound=TurnClosed | RequestFinal | Interrupted | TurnFinal | ContextClosed)


def audio_size(event: ClientEvent) -> int:
    """The decoded size of ``event``'s audio (0 for events without audio)."""
    return len(event.frame.audio) * 3 // 4 if isinstance(event, AudioChunk) else 0


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def combined(before: TurnMetrics | None, after: TurnMetrics) -> TurnMetrics:
    """``after`` with the audio and the first times of ``before`` (earlier work) added."""
    if before is None:
        return after
    return replace(
        after,
        first_text_at=_earliest(before.first_text_at, after.first_text_at),
        flushed_at=_earliest(before.flushed_at, after.flushed_at),
        first_audio_at=_earliest(before.first_audio_at, after.first_audio_at),
        audio_seconds=before.audio_seconds + after.audio_seconds,
        audio_chunks=before.audio_chunks + after.audio_chunks,
    )


class EventBuffer:
    """Bounded-by-the-core queue of one turn's / request's / context's events."""

    __slots__ = (
        "carried",
        "closing",
        "context_id",
        "cycle_reconnects",
        "done",
        "dropped",
        "error",
        "events",
        "exhausted",
        "flushed",
        "handle",
        "key",
        "nbytes",
        "number",
        "origin",
        "reconnects",
        "seen",
    )

    def __init__(self, number: int | None, context_id: str | None = None) -> None:
        self.number = number  # turn/request number on the connection that started it
        self.context_id = context_id
        #: the session's work key for it now (a context's id; else its turn / request number)
        self.key: WorkKey | None = number if context_id is None else context_id
        self.events: deque[ClientEvent] = deque()
        self.nbytes = 0
        self.done = False  # the terminal event (or error) is queued: nothing more comes
        self.error: KugelwireError | None = None  # raised once the queued events are consumed
        self.exhausted = False  # the terminal was handed out
        self.flushed = False  # stream: no more text can be sent to it
        self.dropped = False  # the application dropped its handle
        self.closing = False  # multi: close_context() was called
        #: a weak reference to the API's handle object for this buffer (set by the API layer)
        self.handle: Any = None
        self.reconnects = 0  # reconnects this work was replayed across
        self.cycle_reconnects = 0  # those not yet on a TurnMetrics (multi: the current cycle)
        self.origin: TurnReplay | None = None  # its first replay: when its text was first sent
        #: multi: the finished cycles' figures, all of them (``seen``) and those before the
        #: last reconnect (``carried``: a ContextClosed only covers its own connection's).
        self.seen: TurnMetrics | None = None
        self.carried: TurnMetrics | None = None

    def __repr__(self) -> str:
        return f"<EventBuffer {self.context_id or self.number} events={len(self.events)}>"

    # -- dropping events: each returns (events, audio bytes) removed --------------------------
    def purge(self, keep: Callable[[ClientEvent], bool] | None = None) -> tuple[int, int]:
        """Drop the buffered output (but what ``keep`` says to keep); other events stay."""
        kept: deque[ClientEvent] = deque()
        removed = nbytes = 0
        for event in self.events:
            if isinstance(event, _OUTPUT) and (keep is None or not keep(event)):
                removed += 1
                nbytes += audio_size(event)
            else:
                kept.append(event)
        self.events = kept
        self.nbytes -= nbytes
        return removed, nbytes

    def purge_cycle(self) -> tuple[int, int]:
        """Drop the buffered output of the context's current cycle (after its last final)."""
        events = list(self.events)
        ends = [i for i, e in enumerate(events) if isinstance(e, TurnFinal | Interrupted)]
        before = {id(e) for e in events[: ends[-1] + 1]} if ends else set()
        return self.purge(keep=lambda e: id(e) in before)

    def clear(self) -> tuple[int, int]:
        """Drop every buffered event."""
        removed = len(self.events), self.nbytes
        self.events.clear()
        self.nbytes = 0
        return removed

    # -- metrics across reconnects ------------------------------------------------------------
    def carry_over(self, replay: TurnReplay) -> None:
        """The work was replayed (as ``replay`` says) on a new connection."""
        self.reconnects += 1
        self.cycle_reconnects += 1
        self.carried = self.seen
        if self.origin is None:
            self.origin = replay

    def stamp(self, event: _M) -> _M:
        """``event`` with the reconnects this work survived (and, for the turn / cycle that was
        replayed, its first connection's send times) on its metrics; a cycle's figures are
        added up for the work's end."""
        metrics = event.metrics
        assert metrics is not None
        if self.reconnects:
            event = self._stamped(event, metrics)
            metrics = event.metrics
            assert metrics is not None
        if not event.ends_work:  # a cycle's figures: the work's end adds them up
            self.seen = combined(self.seen, metrics)
        return event

    def _stamped(self, event: _M, metrics: TurnMetrics) -> _M:
        changes: dict[str, Any]
        origin = self.origin
        if isinstance(event, ContextClosed):
            changes = {"reconnects": self.reconnects}
            if self.carried is not None:
                metrics = combined(self.carried, metrics)
        elif self.cycle_reconnects:
            changes = {"reconnects": self.cycle_reconnects}
            self.cycle_reconnects = 0
            self.origin = None
        else:
            return event
        if origin is not None:
            first = origin.first_text_at
            if first is not None and (metrics.first_text_at is None or
                                      first < metrics.first_text_at):
                changes["first_text_at"] = first
            if origin.flushed_at is not None and not isinstance(event, ContextClosed):
                changes["flushed_at"] = origin.flushed_at
        return replace(event, metrics=replace(metrics, **changes))
