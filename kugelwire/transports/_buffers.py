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
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar

from ..errors import KugelwireError, LocalProtocolError
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

__all__ = ["EventBuffer", "WorkBuffers", "audio_size", "combined"]

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

    def purge_cancelled(self, cycles: bool) -> tuple[int, int]:
        """Drop what a cancel removes: with ``cycles`` (a context) its current cycle's output,
        else (a turn, a request) all of its output, and no more text goes to it."""
        if cycles:
            return self.purge_cycle()
        self.flushed = True
        return self.purge()

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


class WorkBuffers:
    """The buffers of a client's unfinished work, by the session's work key, and the bound on
    all of them together: :attr:`reading_paused` while they hold ``max_buffered_bytes`` of
    audio or ``max_buffered_events`` events; :meth:`pop` hands events out (and says, through
    :meth:`take_resumed`, when it made room again). Buffers whose handle the application
    dropped (:meth:`handle_dropped`) are emptied once no more text can go to them.

    Knows nothing of connections or sessions. The base class of
    :class:`~kugelwire.transports._core.ClientCore`, not a part of it: routing an audio chunk
    and :meth:`pop` (the hot path) read and update these attributes directly.
    """

    def __init__(self, max_buffered_bytes: int, max_buffered_events: int) -> None:
        if max_buffered_bytes <= 0 or max_buffered_events <= 0:
            raise LocalProtocolError("buffer bounds must be positive")
        self.max_buffered_bytes = max_buffered_bytes
        self.max_buffered_events = max_buffered_events
        self.buffered_bytes = 0
        self.buffered_events = 0
        self._resumed = False  # pop() made room since the last read
        self._wake_reader = False  # ... and take_resumed() has not said so yet
        self._gc_pending = False
        self._dropped: deque[EventBuffer] = deque()  # handles gone: collect their buffers
        self._live: list[EventBuffer] = []
        #: unfinished work by the session's work key (None, no work, is never a key)
        self._by_key: dict[WorkKey | None, EventBuffer] = {}

    @property
    def reading_paused(self) -> bool:
        """Stop reading the socket (too much is buffered); resume when this turns false."""
        if self._gc_pending:
            self._collect_dropped()
        return (
            self.buffered_bytes >= self.max_buffered_bytes
            or self.buffered_events >= self.max_buffered_events
        )

    def pop(self, buf: EventBuffer) -> ClientEvent | None:
        """The next event of ``buf``, or None when none is buffered yet.

        Raises the buffer's error once its events are consumed; check :attr:`EventBuffer.exhausted`
        before calling (then the stream of events is over).
        """
        events = buf.events
        if events:
            if self._gc_pending:
                self._collect_dropped()
            most_bytes, most_events = self.max_buffered_bytes, self.max_buffered_events
            paused = self.buffered_bytes >= most_bytes or self.buffered_events >= most_events
            event = events.popleft()
            if type(event) is AudioChunk:  # _audio_size, inline (the hot path)
                size = len(event.frame.audio) * 3 // 4
                buf.nbytes -= size
                self.buffered_bytes -= size
            self.buffered_events -= 1
            if buf.done and not events and buf.error is None:
                buf.exhausted = True
            if (
                paused
                and self.buffered_bytes < most_bytes
                and self.buffered_events < most_events
            ):
                self._resumed = self._wake_reader = True
            return event
        if buf.done:
            buf.exhausted = True
            error, buf.error = buf.error, None
            if error is not None:
                raise error
        return None

    def take_resumed(self) -> bool:
        """True once after :meth:`pop` made room again: wake the reader (it may read again)."""
        woke, self._wake_reader = self._wake_reader, False
        return woke

    def handle_dropped(self, buf: EventBuffer) -> None:
        """The application dropped ``buf``'s handle (a finaliser: only sets flags)."""
        buf.dropped = True
        self._dropped.append(buf)
        self._gc_pending = True

    def reclaim(self, buf: EventBuffer) -> None:
        """A new handle was made for ``buf`` (stream: more text for a dropped turn)."""
        buf.dropped = False

    def _add(self, buf: EventBuffer) -> EventBuffer:
        """Events of ``buf``'s work (by its key) go to ``buf`` from now on."""
        assert buf.key is not None
        self._by_key[buf.key] = buf
        self._live.append(buf)
        return buf

    def _carry_over(
        self, replays: list[TurnReplay], key_of: Callable[[TurnReplay], WorkKey | None]
    ) -> list[tuple[TurnReplay, EventBuffer | None]]:
        """The buffers of the work ``replays`` sends again on a new connection (None: work that
        has none), each counting the reconnect; until :meth:`_rekey`, no work has a key."""
        carried = [(r, self._by_key.get(key_of(r))) for r in replays]
        for r, work in carried:
            if work is not None:
                work.carry_over(r)
        self._by_key = {}
        return carried

    def _rekey(self, buf: EventBuffer, key: WorkKey) -> None:
        """``buf``'s work goes on under ``key`` (its replay's, on the new connection)."""
        buf.key = key
        if isinstance(key, int):  # a turn or request: numbered anew on this connection
            buf.number = key
        self._by_key[key] = buf

    def _cid(self, buf: EventBuffer) -> str:
        assert buf.context_id is not None
        if self._by_key.get(buf.context_id) is not buf or buf.done:
            raise LocalProtocolError(f"context {buf.context_id!r} is closed")
        return buf.context_id

    def _uncount(self, removed: tuple[int, int]) -> None:
        """Events a buffer dropped, ``(events, audio bytes)``, leave the totals."""
        self.buffered_events -= removed[0]
        self.buffered_bytes -= removed[1]

    def _collect_dropped(self) -> None:
        """Discard what is buffered for work whose handle is gone (also work that ended before
        its handle was dropped); a dropped turn still taking text is looked at again later."""
        self._gc_pending = False
        dropped, later = self._dropped, []
        while dropped:
            buf = dropped.popleft()
            if not buf.dropped:
                continue  # a new handle claimed it
            if buf.flushed or buf.done:
                if buf.events:
                    self._uncount(buf.clear())
            else:
                later.append(buf)
        if later:
            dropped.extend(later)
            self._gc_pending = True

    def _push(self, buf: EventBuffer, event: ClientEvent, *, terminal: bool = False) -> None:
        if buf.done:
            return
        if not (buf.dropped and buf.flushed):
            buf.events.append(event)
            size = audio_size(event)
            buf.nbytes += size
            self.buffered_bytes += size
            self.buffered_events += 1
        if terminal:
            self._end(buf)

    def _fail(self, buf: EventBuffer, error: KugelwireError) -> None:
        if buf.done:
            return
        error.turn = buf.number if error.turn is None else error.turn
        error.context_id = buf.context_id
        buf.error = error
        self._end(buf)

    def _end(self, buf: EventBuffer) -> None:
        buf.done = True
        if buf in self._live:
            self._live.remove(buf)
        if buf.key is not None and self._by_key.get(buf.key) is buf:
            del self._by_key[buf.key]

    def _end_all(
        self, error: Callable[[], KugelwireError], but: Collection[WorkKey | None] = ()
    ) -> None:
        """Unfinished work (but ``but``'s) is over: a context being closed ends without an
        error, the rest fails with a fresh ``error()`` each."""
        for buf in list(self._live):
            if buf.key not in but:
                if buf.closing:
                    self._end(buf)
                else:
                    self._fail(buf, error())
