"""Rule checks for client behaviour: the four streaming rules, seen from the server.

The streaming protocol has four rules an integration lives or dies by, and breaking them
never fails a request; it only makes the voice agent slower and costlier:

1. one session per LLM turn (never one per sentence);
2. send tokens without flushing (every flush makes the model start over);
3. flush exactly once, at the end of the turn;
4. pre-connect at startup (no handshake inside the first user interaction).

A :class:`Linter` watches connections at the message level and reports every break as a
:class:`Finding`. The local server wraps every session it creates in a :class:`LintedSession`
(on by default; ``lint=False`` / ``kugelwire serve --no-lint`` turns it off), so a developer's
own test run tells them which rule their integration breaks::

    linter = Linter()                                   # one per server
    session = linter.wrap(StreamServerSession(), "/ws/tts/stream", now=loop.time())
    ...                                                 # use it exactly like the session
    for finding in linter.findings: print(finding)

Pure like :mod:`kugelwire.protocol`: no sockets, event loops or clocks; time comes in as
``now`` (the same monotonic clock the session gets). The wrapper forwards every call to the
session unchanged and only reads the frames going through it; a client frame is parsed once
more (small JSON), audio frames are recognised by their first bytes and never parsed. A lock
makes :attr:`Linter.findings` safe to read from another thread (the pytest fixture does).

Findings go to ``on_finding`` (default: one INFO line on the ``kugelwire.lint`` logger) as
they happen; every connection's :class:`ConnectionSummary` goes to ``on_summary`` (default: one
INFO line) when it closes. INFO, because a server serving real clients should not warn about
each of them; ``kugelwire serve`` prints findings itself. Thresholds: :class:`LintThresholds`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from .protocol.ws import MULTI_ENDPOINT, SERVICE_RESTART, STREAM_ENDPOINT, TTS_ENDPOINT

__all__ = [
    "ConnectionSummary",
    "Finding",
    "LintThresholds",
    "LintedSession",
    "Linter",
    "Rule",
    "ServerSessionLike",
]

_log = logging.getLogger("kugelwire.lint")


class Rule(str, Enum):
    """What a :class:`Finding` is about (its value is the rule's short name)."""

    #: A turn (or a multi context's flush cycle) ended by a flush and the reply went on at
    #: once in a new one; or a second flush for a turn that was already flushed.
    FLUSH_PER_SENTENCE = "flush-per-sentence"
    #: Several connections in a row, each opened for one short turn and closed.
    SESSION_PER_SENTENCE = "session-per-sentence"
    #: A turn that was never flushed and ended by the server's idle auto-flush.
    IDLE_AUTO_FLUSH = "idle-auto-flush"
    #: A turn (or a context's text) never flushed when the client dropped the connection:
    #: its unflushed tail was never spoken.
    NEVER_FLUSHED = "never-flushed"
    #: The first text right after the handshake: the connection was opened inside the turn.
    NO_PRECONNECT = "no-preconnect"
    #: ``<spell>`` sent with ``normalize`` off or without a ``language``.
    SPELL_WITHOUT_LANGUAGE = "spell-without-language"
    #: Text sent after ``close_socket``, or to a multi context that is closing.
    TEXT_AFTER_CLOSE = "text-after-close"
    #: Several multi contexts in a row, each used for one short flush and dropped.
    CONTEXT_PER_SENTENCE = "context-per-sentence"
    #: A multi context left open until the server's inactivity timeout closed it.
    CONTEXT_TIMEOUT = "context-timeout"

    def __str__(self) -> str:
        return self.value


_INSTEAD = {
    Rule.FLUSH_PER_SENTENCE: (
        "send the reply's tokens unflushed, as they come, and flush once when the LLM turn ends; "
        "the server finds the sentence boundaries itself"
    ),
    Rule.SESSION_PER_SENTENCE: (
        "open one connection at startup and send every turn on it; a turn is a whole LLM reply"
    ),
    Rule.IDLE_AUTO_FLUSH: (
        'send {"flush": true} (or flush=True on the last text) when the LLM turn ends'
    ),
    Rule.NEVER_FLUSHED: (
        'end every turn with {"flush": true} (and wait for its final) before closing; text '
        "left unflushed when the connection drops is never spoken"
    ),
    Rule.NO_PRECONNECT: (
        "connect at startup, before the first user interaction, and keep the connection for "
        "every turn"
    ),
    Rule.SPELL_WITHOUT_LANGUAGE: (
        'set "language" (e.g. "en") and keep "normalize" on: the service spells with the '
        "language's character names and documents <spell> as needing both"
    ),
    Rule.TEXT_AFTER_CLOSE: (
        "send all text before close_socket / close_context; use a new context (or connection) "
        "for more"
    ),
    Rule.CONTEXT_PER_SENTENCE: (
        "use one context per LLM turn: send its tokens unflushed, flush once, close it"
    ),
    Rule.CONTEXT_TIMEOUT: (
        "close each context (close_context) when its turn is done; an idle context holds one "
        "of the connection's context slots until it times out"
    ),
}


@dataclass(frozen=True, slots=True)
class LintThresholds:
    """When the linter calls something a rule break (all configurable; defaults below).

    Attributes:
        mid_reply_gap_s: text (or a new context's text) arriving at most this long after a
            flush continues the same LLM reply, so that flush was mid-reply. A real next turn
            waits for the user to speak, which takes longer.
        cold_text_s: the first text arriving at most this long after the handshake means the
            connection was opened inside the turn (no pre-connect), whatever it carries later.
        short_text_chars: a turn / context / request of at most this many characters is "a
            sentence" for the per-sentence rules.
        repeat: how many single-sentence connections (or contexts) in a row make a
            per-sentence finding.
        reconnect_gap_s: a connection opened at most this long after the previous one closed
            (or before it closed) continues the same series.
    """

    mid_reply_gap_s: float = 1.0
    cold_text_s: float = 0.1
    short_text_chars: int = 250
    repeat: int = 2
    reconnect_gap_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mid_reply_gap_s", "cold_text_s", "reconnect_gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.short_text_chars < 1:
            raise ValueError("short_text_chars must be at least 1")
        if self.repeat < 2:
            raise ValueError("repeat must be at least 2")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule break.

    Attributes:
        rule: which rule.
        connection: the linter's id of the connection (``c1``, ``c2``... in opening order).
        endpoint: ``/ws/tts/stream``, ``/ws/tts/multi`` or ``/ws/tts``.
        turn: the turn (stream), request (``/ws/tts``) or flush cycle (multi) it is about,
            1-based in order on its connection / context; None when it is about a connection.
        context_id: the multi context it is about, if any.
        at: when it was detected (the server's monotonic clock).
        evidence: what the client did, with the numbers.
        instead: what to do instead.
        latency_ms: what it cost, measured on this connection where that is measurable (for
            example the 5 s an idle auto-flush made the end of the turn wait); else None.
    """

    rule: Rule
    connection: str
    endpoint: str
    turn: int | None
    context_id: str | None
    at: float
    evidence: str
    instead: str
    latency_ms: float | None = None

    def __str__(self) -> str:
        where = f"{self.connection} {self.endpoint}"
        if self.context_id is not None:
            where += f" context {self.context_id!r}"
        if self.turn is not None:
            where += f" turn {self.turn}"
        cost = "" if self.latency_ms is None else f" [costs ~{self.latency_ms:.0f} ms]"
        return f"[{self.rule.value}] {where}: {self.evidence}{cost}. Instead: {self.instead}."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``rule`` as its short name)."""
        return {
            "rule": self.rule.value,
            "connection": self.connection,
            "endpoint": self.endpoint,
            "turn": self.turn,
            "context_id": self.context_id,
            "at": self.at,
            "evidence": self.evidence,
            "instead": self.instead,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True, slots=True)
class ConnectionSummary:
    """What one connection did, reported when it closes."""

    connection: str
    endpoint: str
    opened_at: float | None
    closed_at: float
    client_frames: int
    server_frames: int
    #: stream turns, ``/ws/tts`` requests, or multi contexts that carried text
    units: int
    flushes: int
    characters: int
    findings: tuple[Rule, ...]

    def __str__(self) -> str:
        noun = {STREAM_ENDPOINT: "turn", TTS_ENDPOINT: "request"}.get(self.endpoint, "context")
        life = (
            "" if self.opened_at is None else f" after {self.closed_at - self.opened_at:.2f} s"
        )
        rules = sorted({r.value for r in self.findings})
        verdict = (
            "follows the rules"
            if not rules
            else f"{len(self.findings)} finding(s): {', '.join(rules)}"
        )
        return (
            f"{self.connection} {self.endpoint} closed{life}: {self.units} {noun}(s), "
            f"{self.characters} characters, {self.flushes} flush(es), {self.client_frames} "
            f"client / {self.server_frames} server frames; {verdict}"
        )


#: The :class:`ConnectionSummary` fields a connection's tracker counts under the same names.
_SUMMARY_COUNTERS = tuple(
    f.name
    for f in fields(ConnectionSummary)
    if f.name not in ("connection", "closed_at", "findings")
)


def _log_finding(finding: Finding) -> None:
    _log.info("%s", finding)


def _log_summary(summary: ConnectionSummary) -> None:
    _log.info("%s", summary)


@dataclass(slots=True)
class _Series:
    """Single-sentence connections in a row on one endpoint."""

    ids: list[str] = field(default_factory=list)  # the first few (bounded)
    count: int = 0
    last_closed_at: float = 0.0
    reported: bool = False


class Linter:
    """The rule checks of one server: its connections, their findings, and the state that
    spans connections (connection-per-sentence series).

    Args:
        thresholds: see :class:`LintThresholds`.
        on_finding: called with every :class:`Finding` as it is made (default: an INFO line
            on the ``kugelwire.lint`` logger). Exceptions it raises propagate.
        on_summary: called with each connection's :class:`ConnectionSummary` when it closes
            (default: an INFO line on the same logger).
        max_findings: the most findings kept in :attr:`findings` (oldest dropped first;
            :attr:`counts` and :attr:`total` count them all). Memory stays bounded on a
            long-running server whatever its clients do.
        max_summaries: the most connection summaries kept in :attr:`summaries`.
    """

    def __init__(
        self,
        thresholds: LintThresholds | None = None,
        *,
        on_finding: Callable[[Finding], None] | None = _log_finding,
        on_summary: Callable[[ConnectionSummary], None] | None = _log_summary,
        max_findings: int = 100,
        max_summaries: int = 20,
    ) -> None:
        self.thresholds = thresholds or LintThresholds()
        self._sinks: list[Callable[[Finding], None]] = [] if on_finding is None else [on_finding]
        self._on_summary = on_summary
        self._lock = threading.Lock()
        self._findings: deque[Finding] = deque(maxlen=max_findings)
        self._summaries: deque[ConnectionSummary] = deque(maxlen=max_summaries)
        self._counts: dict[Rule, int] = dict.fromkeys(Rule, 0)
        self._count = 0
        self._total = 0
        self._open = 0
        self._series: dict[str, _Series] = {}

    # -- results -----------------------------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        """Every finding so far (a copy), oldest first."""
        with self._lock:
            return list(self._findings)

    @property
    def summaries(self) -> list[ConnectionSummary]:
        """The summaries of the connections closed so far (a copy), oldest first."""
        with self._lock:
            return list(self._summaries)

    @property
    def counts(self) -> dict[Rule, int]:
        """Findings ever made, per rule (every rule present, 0 when never broken)."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        """How many findings were ever made (also those dropped from :attr:`findings`)."""
        return self._total

    @property
    def open_connections(self) -> int:
        """Watched connections that have not closed yet."""
        return self._open

    def findings_since(self, index: int) -> tuple[int, list[Finding]]:
        """``(total, findings made after the first index)`` for pollers (the playground)."""
        with self._lock:
            total = self._total
            new = max(0, min(total - index, len(self._findings)))
            return total, list(self._findings)[len(self._findings) - new :] if new else []

    def clear(self) -> None:
        """Forget the findings and summaries kept so far (connections stay watched)."""
        with self._lock:
            self._findings.clear()
            self._summaries.clear()

    def add_sink(self, sink: Callable[[Finding], None]) -> None:
        """Also call ``sink`` with every later finding."""
        self._sinks.append(sink)

    # -- watching ----------------------------------------------------------------------------
    def wrap(self, session: _S, endpoint: str, now: float | None = None) -> LintedSession[_S]:
        """Watch ``session`` (a server session for ``endpoint``, accepted at ``now``)."""
        return LintedSession(session, self, endpoint, now)

    def _new_id(self) -> str:
        with self._lock:
            self._count += 1
            self._open += 1
            return f"c{self._count}"

    def _report(self, finding: Finding) -> None:
        with self._lock:
            self._findings.append(finding)
            self._total += 1
            self._counts[finding.rule] += 1
        for sink in self._sinks:
            sink(finding)

    def _series_live(self, endpoint: str, opened_at: float | None) -> bool:
        """Did a single-sentence connection on ``endpoint`` close just before ``opened_at``?"""
        series = self._series.get(endpoint)
        return (
            series is not None
            and series.count > 0
            and opened_at is not None
            and opened_at - series.last_closed_at <= self.thresholds.reconnect_gap_s
        )

    def _closed(self, watch: _Watch, now: float) -> None:
        """Cross-connection rules, then the summary."""
        th = self.thresholds
        series = self._series.setdefault(watch.endpoint, _Series())
        continues = series.count > 0 and self._series_live(watch.endpoint, watch.opened_at)
        joined = watch.units == 1 and watch.cold and watch.characters <= th.short_text_chars
        if joined:
            if not continues:
                series.ids, series.count, series.reported = [], 0, False
            series.count += 1
            if len(series.ids) < th.repeat:
                series.ids.append(watch.id)
            series.last_closed_at = now
        else:
            series.ids, series.count, series.reported = [], 0, False
        if watch.cold_pending and not (joined and series.count > 1):
            # decided now: it did not continue a connection-per-sentence series after all
            watch.report_cold(now)
        if series.count >= th.repeat and not series.reported:
            series.reported = True
            watch.report(
                Rule.SESSION_PER_SENTENCE,
                None,
                f"{len(series.ids)} connections in a row ({', '.join(series.ids)}) each carried "
                "one short turn and closed; every one paid a new handshake",
                now,
            )
        watch.flush_pending(now)
        watch.unflushed_at_close(now)
        summary = watch.summary(now)
        with self._lock:
            self._open -= 1
            self._summaries.append(summary)
        if self._on_summary is not None:
            self._on_summary(summary)


# -- per-connection observation ----------------------------------------------------------------
@dataclass(slots=True)
class _Unit:
    """A stream turn, a multi context or a /ws/tts request, as the client sent it."""

    number: int  # 1-based
    started_at: float
    context_id: str | None = None
    characters: int = 0
    cycle: int = 1  # multi: flush cycle, 1-based
    cycle_chars: int = 0
    open: bool = True  # stream: input still accepted (not flushed); multi: not closing
    flushed_at: float | None = None  # the last flush (or close) that ended input
    #: when the audio of that flush was all out (stream: session_closed; multi: final); None
    #: while it is still being delivered
    delivered_at: float | None = None
    last_text_at: float | None = None
    spell_checked: bool = False
    flush_reported: bool = False
    cycles: int = 0  # multi: flushes
    #: a flush finding waiting for the first audio after it: (evidence, since, turn)
    pending: tuple[str, float, int] | None = None


@dataclass(slots=True)
class _Watch:
    """What the linter tracks for one connection."""

    linter: Linter
    id: str
    endpoint: str
    opened_at: float | None
    first_text_at: float | None = None
    cold: bool = False  # the first text came right after the handshake
    cold_pending: bool = False  # ...and whether that is a finding is decided at close
    client_frames: int = 0
    server_frames: int = 0
    units: int = 0
    flushes: int = 0
    characters: int = 0
    language: Any = None
    normalize: Any = True
    closed_socket: bool = False
    text_after_close_reported: bool = False
    rules: list[Rule] = field(default_factory=list)
    turn: _Unit | None = None  # stream: the current (or last) turn
    contexts: dict[str, _Unit] = field(default_factory=dict)  # multi: open / closing
    closing: set[str] = field(default_factory=set)
    # multi: contexts used for one short flush in a row
    ctx_series: list[str] = field(default_factory=list)
    ctx_series_last: float | None = None
    ctx_series_reported: bool = False
    last_text_context: str | None = None  # multi: the context of the latest text frame

    def report(
        self,
        rule: Rule,
        unit: _Unit | None,
        evidence: str,
        now: float,
        *,
        latency_ms: float | None = None,
        whole: bool = False,
        turn: int | None = None,
    ) -> None:
        """Make a finding about ``unit``: its ``turn`` (default: the unit's turn / flush
        cycle), or none with ``whole`` (about the whole context)."""
        self.rules.append(rule)
        if turn is None and unit is not None and not whole:
            turn = unit.number if unit.context_id is None else unit.cycle
        self.linter._report(
            Finding(
                rule=rule,
                connection=self.id,
                endpoint=self.endpoint,
                turn=turn,
                context_id=None if unit is None else unit.context_id,
                at=now,
                evidence=evidence,
                instead=_INSTEAD[rule],
                latency_ms=None if latency_ms is None else round(latency_ms, 1),
            )
        )

    def report_cold(self, now: float) -> None:
        assert self.opened_at is not None and self.first_text_at is not None
        self.cold_pending = False
        gap_ms = (self.first_text_at - self.opened_at) * 1000
        self.report(
            Rule.NO_PRECONNECT,
            None,
            f"the first text came {gap_ms:.0f} ms after the handshake: the connection was "
            "opened inside the turn, so the turn waited for a TCP/TLS/WebSocket handshake",
            now,
        )

    # -- client frames -----------------------------------------------------------------------
    def client(self, obj: dict[str, Any], now: float) -> None:
        self.client_frames += 1
        text = obj.get("text")
        # whitespace-only text (an SDK's context init frame, " ") is no text of a turn
        text = text if isinstance(text, str) and not text.isspace() else ""
        if text and self.first_text_at is None:
            self.first_text_at = now
            opened = self.opened_at
            if opened is not None and now - opened <= self.linter.thresholds.cold_text_s:
                self.cold = True
                if self.linter._series_live(self.endpoint, opened):
                    self.cold_pending = True  # perhaps the next of a per-sentence series
                else:
                    self.report_cold(now)
        if text and self.closed_socket and not self.text_after_close_reported:
            self.text_after_close_reported = True
            self.report(
                Rule.TEXT_AFTER_CLOSE,
                None,
                f"text ({len(text)} characters) sent after close_socket; the server ignores it",
                now,
            )
        settings = obj.get("update_settings")
        if isinstance(settings, dict):
            self._config(settings)
        if self.endpoint == STREAM_ENDPOINT:
            self._stream(obj, text, now)
        elif self.endpoint == MULTI_ENDPOINT:
            self._multi(obj, text, now)
        elif self.endpoint == TTS_ENDPOINT:
            self._tts(obj, text, now)
        if obj.get("close_socket"):
            self.closed_socket = True

    def _config(self, obj: dict[str, Any]) -> None:
        if "language" in obj:
            self.language = obj["language"]
        if "normalize" in obj:
            self.normalize = obj["normalize"]

    def _spell(self, unit: _Unit, text: str, language: Any, normalize: Any, now: float) -> None:
        if unit.spell_checked or "<spell" not in text.lower():
            return
        unit.spell_checked = True
        problems = []
        if normalize is False:
            problems.append('"normalize" is off')
        if not language:
            problems.append('no "language" is set')
        if problems:
            self.report(
                Rule.SPELL_WITHOUT_LANGUAGE,
                unit,
                "<spell> sent while " + " and ".join(problems),
                now,
            )

    def _stream(self, obj: dict[str, Any], text: str, now: float) -> None:
        th = self.linter.thresholds
        if not obj.get("cancel"):
            self._config(obj)
        if obj.get("cancel"):
            if self.turn is not None:
                self.turn.open = False
                self.turn.flushed_at = None  # a barge-in is not a flush
            return
        turn = self.turn
        if text:
            if turn is None or not turn.open:
                previous = turn
                if previous is not None and previous.pending is not None:
                    self._emit_pending(previous, now, None)
                turn = self.turn = _Unit(self.units + 1, now)
                self.units += 1
                if previous is not None and previous.flushed_at is not None:
                    gap = _gap(previous, now)
                    if gap <= th.mid_reply_gap_s and not previous.flush_reported:
                        turn.flush_reported = True  # one finding per reply
                        turn.pending = (
                            f"turn {previous.number} was flushed and the reply went on in turn "
                            f"{turn.number} {_gap_text(previous, now)} ({previous.characters} "
                            f"then {len(text)}+ characters): every flush ends the turn and the "
                            "next text pays a new model prefill",
                            now,
                            turn.number,
                        )
                    elif gap <= th.mid_reply_gap_s:
                        turn.flush_reported = True  # same reply, already reported
            turn.characters += len(text)
            self.characters += len(text)
            turn.last_text_at = now
            self._spell(turn, text, self.language, self.normalize, now)
        ends = obj.get("flush") or obj.get("close") or obj.get("end_session")
        if ends or obj.get("close_socket"):
            if ends:
                self.flushes += 1
            if turn is not None and turn.open:
                turn.open = False
                turn.flushed_at = now if ends else None
                turn.delivered_at = None
            elif (
                obj.get("flush")
                and turn is not None
                and turn.flushed_at is not None
                and not turn.flush_reported
            ):
                turn.flush_reported = True
                self.report(
                    Rule.FLUSH_PER_SENTENCE,
                    turn,
                    f"a second flush for turn {turn.number}, which was already flushed "
                    "(the server ignores it): flush exactly once per turn",
                    now,
                )

    def _multi(self, obj: dict[str, Any], text: str, now: float) -> None:
        th = self.linter.thresholds
        self._config(obj)
        cid = obj.get("context_id")
        if not isinstance(cid, str):
            return
        unit = self.contexts.get(cid)
        if obj.get("close_context"):
            if unit is not None and unit.open:
                unit.open = False
                unit.flushed_at = now
                self.closing.add(cid)
                if not obj.get("immediate"):  # a barge-in is not a finished sentence
                    self._context_done(unit, now)
            return
        if text and cid in self.closing:
            if not self.text_after_close_reported:
                self.text_after_close_reported = True
                self.report(
                    Rule.TEXT_AFTER_CLOSE,
                    unit,
                    f"text ({len(text)} characters) sent to context {cid!r} after "
                    "close_context, before its context_closed",
                    now,
                )
            return
        if unit is None:
            if not text and not obj.get("flush"):
                unit = self.contexts[cid] = _Unit(0, now, cid)  # pre-provisioned, unused
                return
            unit = self.contexts[cid] = _Unit(0, now, cid)
        if text:
            if unit.characters == 0:
                self.units += 1
                unit.number = self.units
                unit.started_at = now
                self._context_started(unit, now)
            # (when another context spoke in between, this is a dialogue, not one reply)
            if (
                unit.flushed_at is not None
                and unit.cycle_chars == 0
                and self.last_text_context == cid
            ):
                gap = _gap(unit, now)
                if gap <= th.mid_reply_gap_s and not unit.flush_reported:
                    unit.flush_reported = True
                    unit.pending = (
                        f"context {cid!r} was flushed and its text went on "
                        f"{_gap_text(unit, now)} in flush cycle {unit.cycle}: each flush is a "
                        "fresh model prefill",
                        now,
                        unit.cycle,
                    )
            self.last_text_context = cid
            unit.characters += len(text)
            unit.cycle_chars += len(text)
            unit.last_text_at = now
            self.characters += len(text)
            self._spell(unit, text, self.language, self.normalize, now)
        if obj.get("flush"):
            self.flushes += 1
            unit.cycles += 1
            if unit.cycle_chars:
                unit.cycle += 1
            unit.cycle_chars = 0
            unit.flushed_at = now
            unit.delivered_at = None

    def _context_started(self, unit: _Unit, now: float) -> None:
        """A context got its first text: does it continue a context-per-sentence series?"""
        th = self.linter.thresholds
        last = self.ctx_series_last
        if self.ctx_series and last is not None and now - last > th.mid_reply_gap_s:
            self.ctx_series, self.ctx_series_reported = [], False

    def _context_done(self, unit: _Unit, now: float) -> None:
        """A context's input ended (close_context): was it one short sentence?"""
        th = self.linter.thresholds
        if unit.characters == 0:
            return
        if unit.cycles <= 1 and unit.characters <= th.short_text_chars:
            self.ctx_series.append(unit.context_id or "")
            self.ctx_series_last = None  # set when its context_closed is sent
            if len(self.ctx_series) > th.repeat:
                del self.ctx_series[0]  # bounded: only the last few ids are named
            if len(self.ctx_series) >= th.repeat and not self.ctx_series_reported:
                self.ctx_series_reported = True
                ids = ", ".join(repr(c) for c in self.ctx_series)
                self.report(
                    Rule.CONTEXT_PER_SENTENCE,
                    unit,
                    f"{len(self.ctx_series)} contexts in a row ({ids}) each carried one short "
                    "text and were closed, the next one opened at once",
                    now,
                    whole=True,
                )
        else:
            self.ctx_series, self.ctx_series_last = [], None

    def _tts(self, obj: dict[str, Any], text: str, now: float) -> None:
        if not text:
            return
        self.units += 1
        self.characters += len(text)
        unit = _Unit(self.units, now, characters=len(text))
        language = obj.get("language", self.language)
        normalize = obj.get("normalize", self.normalize)
        self._spell(unit, text, language, normalize, now)

    # -- server frames -----------------------------------------------------------------------
    def server(self, text: str, now: float) -> None:
        self.server_frames += 1
        if text.startswith('{"audio"'):
            self._audio(text, now)
            return
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if "warning" in obj and self.endpoint == STREAM_ENDPOINT:
            turn = self.turn
            if turn is not None and turn.open and turn.last_text_at is not None:
                turn.open = False
                waited = (now - turn.last_text_at) * 1000
                self.report(
                    Rule.IDLE_AUTO_FLUSH,
                    turn,
                    f"turn {turn.number} was never flushed: the server ended it after "
                    f"{waited / 1000:.1f} s without text (idle auto-flush), so its last words "
                    "waited that long",
                    now,
                    latency_ms=waited,
                )
        elif obj.get("context_timeout"):
            cid = obj.get("context_id")
            unit = self.contexts.get(cid) if isinstance(cid, str) else None
            idle = None if unit is None else unit.last_text_at or unit.started_at
            self.report(
                Rule.CONTEXT_TIMEOUT,
                unit if unit is not None else _Unit(0, now, str(cid)),
                f"context {cid!r} was left open"
                + ("" if idle is None else f" and idle for {now - idle:.1f} s")
                + " until the server's inactivity timeout closed it",
                now,
                whole=True,
            )
        elif obj.get("session_closed") and self.endpoint == STREAM_ENDPOINT:
            if self.turn is not None and not self.turn.open:
                self.turn.delivered_at = now
        elif obj.get("final") and self.endpoint == MULTI_ENDPOINT:
            cid = obj.get("context_id")
            unit = self.contexts.get(cid) if isinstance(cid, str) else None
            if unit is not None:
                unit.delivered_at = now
        elif obj.get("context_closed"):
            cid = obj.get("context_id")
            if isinstance(cid, str):
                if self.ctx_series and self.ctx_series[-1] == cid:
                    self.ctx_series_last = now
                self.closing.discard(cid)
                unit = self.contexts.pop(cid, None)
                if unit is not None and unit.pending is not None:
                    self._emit_pending(unit, now, None)

    def _audio(self, text: str, now: float) -> None:
        unit: _Unit | None = None
        if self.endpoint == STREAM_ENDPOINT:
            unit = self.turn
        elif self.endpoint == MULTI_ENDPOINT:
            head = text[-300:]
            mark = head.rfind('"context_id":')
            if mark >= 0:
                try:
                    cid = json.loads("{" + head[mark:])["context_id"]
                except (ValueError, KeyError):
                    cid = None
                unit = self.contexts.get(cid) if isinstance(cid, str) else None
        if unit is not None and unit.pending is not None:
            self._emit_pending(unit, now, (now - unit.pending[1]) * 1000)

    def _emit_pending(self, unit: _Unit, now: float, latency_ms: float | None) -> None:
        assert unit.pending is not None
        evidence, _, turn = unit.pending
        unit.pending = None
        self.report(Rule.FLUSH_PER_SENTENCE, unit, evidence, now, latency_ms=latency_ms,
                    turn=turn)

    def unflushed_at_close(self, now: float) -> None:
        """The client dropped the connection: was text still waiting for its flush?"""
        if self.closed_socket:
            return  # close_socket ends (and speaks) what is open
        if self.endpoint == STREAM_ENDPOINT:
            turn = self.turn
            if turn is not None and turn.open and turn.characters:
                self.report(
                    Rule.NEVER_FLUSHED, turn,
                    f"turn {turn.number} ({turn.characters} characters) was never flushed: "
                    "the connection closed with the turn still open",
                    now,
                )
        elif self.endpoint == MULTI_ENDPOINT:
            open_ = [u for u in self.contexts.values() if u.open and u.cycle_chars]
            if open_:
                names = ", ".join(repr(u.context_id) for u in open_[:5])
                self.report(
                    Rule.NEVER_FLUSHED, open_[0],
                    f"{len(open_)} context(s) ({names}) had text never flushed or closed when "
                    "the connection closed",
                    now, whole=True,
                )

    def flush_pending(self, now: float) -> None:
        units: Iterable[_Unit] = list(self.contexts.values())
        if self.turn is not None:
            units = [*units, self.turn]
        for unit in units:
            if unit.pending is not None:
                self._emit_pending(unit, now, None)

    def summary(self, now: float) -> ConnectionSummary:
        # the summary's counters are this tracker's attributes of the same names
        counters = {name: getattr(self, name) for name in _SUMMARY_COUNTERS}
        return ConnectionSummary(
            connection=self.id, closed_at=now, findings=tuple(self.rules), **counters
        )


class ServerSessionLike(Protocol):
    """What :class:`LintedSession` forwards: a server session's message-level interface and
    its engine hand-off (every session of :mod:`kugelwire.protocol` has it)."""

    @property
    def close_code(self) -> int | None: ...

    def receive_message(self, text: str, now: float) -> None: ...

    def messages_to_send(self) -> list[str]: ...

    def next_deadline(self) -> float | None: ...

    def handle_timeout(self, now: float) -> None: ...

    def connection_lost(self, code: int | None, reason: str, now: float) -> None: ...

    def events(self) -> Iterator[Any]: ...

    def send_audio(self, ref: Any, pcm: bytes, now: float) -> bool: ...

    def send_word_timestamps(self, ref: Any, words: Iterable[Any], now: float) -> bool: ...

    def complete_chunk(self, ref: Any, gen_ms: float, now: float) -> bool: ...

    def fail_chunk(self, ref: Any, message: str, now: float) -> bool: ...

    def shutdown(self, now: float, code: int = SERVICE_RESTART) -> None: ...


_S = TypeVar("_S", bound=ServerSessionLike)


def _gap(unit: _Unit, now: float) -> float:
    """How long after its flushed audio was all out the next text came (0 if it was not)."""
    return 0.0 if unit.delivered_at is None else max(0.0, now - unit.delivered_at)


def _gap_text(unit: _Unit, now: float) -> str:
    if unit.delivered_at is None:
        assert unit.flushed_at is not None
        return (
            f"{(now - unit.flushed_at) * 1000:.0f} ms after the flush, before its audio was "
            "all out"
        )
    return f"{(now - unit.delivered_at) * 1000:.0f} ms after its audio was all out"


class LintedSession(Generic[_S]):
    """A server session under watch: the same interface, every call forwarded unchanged.

    The message-level calls (``receive_message``, ``messages_to_send``, ``handle_timeout``,
    ``connection_lost``) and the engine hand-off (``send_audio``, ``send_word_timestamps``,
    ``complete_chunk``, ``fail_chunk``, ``shutdown``) are observed for their ``now``; anything
    else (``events()``, ``config``, ``close_code``...) is read from the wrapped session.
    """

    def __init__(self, session: _S, linter: Linter, endpoint: str, now: float | None) -> None:
        self.session = session
        self._linter = linter
        self._watch = _Watch(linter, linter._new_id(), endpoint, now)
        self._now = 0.0 if now is None else now
        self._done = False

    @property
    def connection_id(self) -> str:
        """The id findings about this connection carry."""
        return self._watch.id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    @property
    def close_code(self) -> int | None:
        return self.session.close_code

    def receive_message(self, text: str, now: float) -> None:
        self._now = now
        self.session.receive_message(text, now)
        if self._done:
            return
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._watch.client(obj, now)

    def messages_to_send(self) -> list[str]:
        out = self.session.messages_to_send()
        if not self._done:
            for text in out:
                self._watch.server(text, self._now)
        return out

    def next_deadline(self) -> float | None:
        return self.session.next_deadline()

    def handle_timeout(self, now: float) -> None:
        self._now = now
        self.session.handle_timeout(now)

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self._now = now
        self.session.connection_lost(code, reason, now)
        if not self._done:
            self._done = True
            self._linter._closed(self._watch, now)

    def events(self) -> Iterator[Any]:
        return self.session.events()

    def send_audio(self, ref: Any, pcm: bytes, now: float) -> bool:
        self._now = now
        return self.session.send_audio(ref, pcm, now)

    def send_word_timestamps(self, ref: Any, words: Iterable[Any], now: float) -> bool:
        self._now = now
        return self.session.send_word_timestamps(ref, words, now)

    def complete_chunk(self, ref: Any, gen_ms: float, now: float) -> bool:
        self._now = now
        return self.session.complete_chunk(ref, gen_ms, now)

    def fail_chunk(self, ref: Any, message: str, now: float) -> bool:
        self._now = now
        return self.session.fail_chunk(ref, message, now)

    def shutdown(self, now: float, code: int = SERVICE_RESTART) -> None:
        self._now = now
        self.session.shutdown(now, code)

