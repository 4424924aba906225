"""Server metrics: a small Prometheus registry fed by a message-level session observer.

Nothing here does I/O or reads a clock: every observation carries the caller's ``now``.

* :class:`Metrics` — the registry (counters, gauges, histograms, all named ``kugelwire_*``) and
  the Prometheus text exposition (format 0.0.4) that ``GET /metrics`` answers.
* :class:`ObservedSession` — a transparent wrapper around any server session: it sees every
  client message going in and every server message going out (with ``now``) and turns them into
  turn, audio, latency, engine and error figures. It decides nothing and changes no message.
* The connection glue adds three calls: :meth:`Metrics.connection_opened`,
  :meth:`Metrics.connection_closed`, :meth:`Metrics.rejected`.

Turns: a ``/ws/tts/stream`` turn, a ``/ws/tts`` request and a ``/ws/tts/multi`` context flush
cycle each count once in ``kugelwire_turns_started_total`` when they begin and exactly once in
``kugelwire_turns_total{outcome=...}`` when they end: ``completed`` (``final``), ``interrupted``
(cancel / barge-in), ``error`` (a request refused with an error frame), ``closed`` (a context
closed or timed out before its cycle's ``final``) or ``disconnected`` (the socket went away first).

Several worker processes (``serve --workers N``) aggregate through :meth:`Metrics.snapshot` /
:meth:`Metrics.render` ``(others=...)``: each worker periodically publishes its snapshot and the
worker that answers a scrape adds the other workers' latest snapshots to its own live figures.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from ..protocol.ws import ENDPOINT_KINDS, HttpHandler

__all__ = [
    "FIRST_AUDIO_BUCKETS",
    "METRICS_PATH",
    "RTF_BUCKETS",
    "Metrics",
    "ObservedSession",
    "connection_closed",
    "connection_opened",
    "metrics_handler",
    "name_peer",
    "observe",
    "request_rejected",
]

log = logging.getLogger("kugelwire.server")

#: The path that answers the Prometheus text (when metrics are on).
METRICS_PATH = "/metrics"
#: Seconds from a turn's first text to its first audio frame.
FIRST_AUDIO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Engine time / audio time, per chunk (``/ws/tts``: per request).
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

#: Every metric family as (name, type, help[, buckets]), in the order ``GET /metrics`` lists them.
FAMILIES: tuple[tuple[str, str, str] | tuple[str, str, str, tuple[float, ...]], ...] = (
    ("kugelwire_connections", "gauge", "Open TCP connections."),
    ("kugelwire_connections_total", "counter", "TCP connections accepted."),
    (
        "kugelwire_rejected_upgrades_total", "counter",
        "Requests refused with an HTTP error (by status and reason).",
    ),
    ("kugelwire_sessions", "gauge", "Open WebSocket sessions per endpoint."),
    ("kugelwire_sessions_total", "counter", "WebSocket sessions accepted per endpoint."),
    (
        "kugelwire_turns_started_total", "counter",
        "Turns begun (stream turns, tts requests, multi context flush cycles).",
    ),
    ("kugelwire_turns_total", "counter", "Turns finished, by endpoint and outcome."),
    ("kugelwire_audio_seconds_total", "counter", "Seconds of audio sent, per endpoint."),
    (
        "kugelwire_first_audio_seconds", "histogram",
        "Seconds from a turn's first text to its first audio frame.", FIRST_AUDIO_BUCKETS,
    ),
    ("kugelwire_engine_seconds_total", "counter", "Seconds spent in the engine."),
    (
        "kugelwire_engine_real_time_factor", "histogram",
        "Engine time divided by audio time, per chunk (/ws/tts: per request).", RTF_BUCKETS,
    ),
    ("kugelwire_errors_total", "counter", "Error frames sent, by endpoint and error_code."),
)

_ENDPOINTS = {path: kind for kind, path in ENDPOINT_KINDS.items()}
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
#: What :meth:`Metrics.snapshot` returns (JSON-able).
Snapshot: TypeAlias = Mapping[str, list[list[Any]]]


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    """One metric family: name, type, help and its samples keyed by label values."""

    __slots__ = ("buckets", "help", "kind", "name", "values")

    def __init__(
        self, name: str, kind: str, help: str, buckets: Sequence[float] = ()
    ) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.buckets = tuple(buckets)
        #: counter/gauge: labels -> value; histogram: labels -> [count per bucket..., +Inf, sum]
        self.values: dict[Labels, Any] = {}

    def add(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def observe(self, labels: Labels, value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[len(self.buckets)] += 1
        row[-1] += value

    def merge(self, values: Mapping[Labels, Any]) -> dict[Labels, Any]:
        out = {k: (list(v) if isinstance(v, list) else v) for k, v in self.values.items()}
        for labels, value in values.items():
            mine = out.get(labels)
            if mine is None:
                out[labels] = list(value) if isinstance(value, list) else value
            elif isinstance(mine, list):
                out[labels] = [a + b for a, b in zip(mine, value, strict=True)]
            else:
                out[labels] = mine + value
        return out

    def render(self, values: Mapping[Labels, Any]) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels in sorted(values):
            value = values[labels]
            if self.kind != "histogram":
                yield f"{self.name}{_labels(labels)} {_fmt(value)}"
                continue
            for bound, count in zip((*self.buckets, math.inf), value, strict=False):
                le = f'le="{_fmt(bound)}"'
                yield f"{self.name}_bucket{_labels(labels, le)} {_fmt(count)}"
            yield f"{self.name}_sum{_labels(labels)} {_fmt(value[-1])}"
            yield f"{self.name}_count{_labels(labels)} {_fmt(value[-2])}"


def _ep(endpoint: str) -> Labels:
    return (("endpoint", endpoint),)


class Metrics:
    """The server's metrics registry (one per server process; not thread-safe: feed it from
    the server's event loop). ``render()`` is the Prometheus text format."""

    #: Every family this registry holds: ``(name, type, help[, buckets])``.
    FAMILIES = FAMILIES

    def __init__(self) -> None:
        #: Set by a multi-process supervisor: the other processes' latest snapshots, added to
        #: this process's live figures by ``GET /metrics``.
        self.others: Callable[[], Iterable[Snapshot]] | None = None
        self._families = {row[0]: _Family(*row) for row in FAMILIES}

    def _add(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        self._families[name].add(labels, amount)

    def _observe(self, name: str, labels: Labels, value: float) -> None:
        self._families[name].observe(labels, value)

    # -- connection glue ----------------------------------------------------------------------
    def connection_opened(self, now: float) -> None:
        """A TCP connection was accepted."""
        self._add("kugelwire_connections", (), 1)
        self._add("kugelwire_connections_total", (), 1)

    def connection_closed(self, now: float) -> None:
        """A TCP connection is gone (every opened one is closed exactly once)."""
        self._add("kugelwire_connections", (), -1)

    def rejected(self, status: int, reason: str, now: float) -> None:
        """An upgrade (or plain request) answered with an HTTP error, or refused as busy."""
        labels = (("reason", reason), ("status", str(status)))
        self._add("kugelwire_rejected_upgrades_total", labels)

    # -- fed by ObservedSession ------------------------------------------------------------
    def session_opened(self, endpoint: str) -> None:
        """A WebSocket session began on ``endpoint`` (``stream`` / ``multi`` / ``tts``)."""
        self._add("kugelwire_sessions", _ep(endpoint), 1)
        self._add("kugelwire_sessions_total", _ep(endpoint), 1)

    def session_closed(self, endpoint: str) -> None:
        """A WebSocket session ended."""
        self._add("kugelwire_sessions", _ep(endpoint), -1)

    def turn_started(self, endpoint: str) -> None:
        """A turn (stream turn, tts request, multi flush cycle) got its first text."""
        self._add("kugelwire_turns_started_total", _ep(endpoint))

    def turn_finished(self, endpoint: str, outcome: str) -> None:
        """A turn ended: ``completed``, ``interrupted``, ``error``, ``closed`` or
        ``disconnected``."""
        self._add("kugelwire_turns_total", (("endpoint", endpoint), ("outcome", outcome)))

    def first_audio(self, endpoint: str, seconds: float) -> None:
        """A turn's first audio frame went out ``seconds`` after its first text."""
        self._observe("kugelwire_first_audio_seconds", _ep(endpoint), max(0.0, seconds))

    def audio(self, endpoint: str, seconds: float) -> None:
        """An audio frame of ``seconds`` went out."""
        self._add("kugelwire_audio_seconds_total", _ep(endpoint), seconds)

    def engine(self, endpoint: str, engine_s: float, audio_s: float) -> None:
        """The engine spent ``engine_s`` seconds making ``audio_s`` seconds of audio."""
        self._add("kugelwire_engine_seconds_total", _ep(endpoint), engine_s)
        if audio_s > 0:
            self._observe("kugelwire_engine_real_time_factor", _ep(endpoint), engine_s / audio_s)

    def error(self, endpoint: str, error_code: str) -> None:
        """An error frame with ``error_code`` went out."""
        self._add("kugelwire_errors_total", (("endpoint", endpoint), ("error_code", error_code)))

    # -- reading -------------------------------------------------------------------------------
    def gauge_names(self) -> frozenset[str]:
        """Families whose samples are current levels (dropped from a dead worker's figures)."""
        return frozenset(n for n, fam in self._families.items() if fam.kind == "gauge")

    def value(self, name: str, **labels: str) -> float:
        """A counter or gauge value (0 when never set); for a histogram, its observation count.
        Handy in tests: ``metrics.value("kugelwire_turns_total", endpoint="stream",
        outcome="completed")``."""
        family = self._families[name]
        key = tuple(sorted(labels.items()))
        value = family.values.get(key, 0.0)
        if family.kind == "histogram":
            return float(value[-2]) if value else 0.0
        return float(value)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every family's samples as JSON-able data (for aggregating worker processes)."""
        return {
            name: [[list(map(list, labels)), value] for labels, value in fam.values.items()]
            for name, fam in self._families.items()
        }

    def render(self, others: Iterable[Snapshot] = ()) -> bytes:
        """The Prometheus text exposition, adding ``others`` (snapshots of other processes)."""
        merged = {name: dict(fam.values) for name, fam in self._families.items()}
        for snap in others:
            for name, rows in snap.items():
                fam = self._families.get(name)
                if fam is None:
                    continue
                extra = {tuple((str(k), str(v)) for k, v in labels): value
                         for labels, value in rows}
                merged[name] = _Family.merge(_with(fam, merged[name]), extra)
        lines: list[str] = []
        for name, fam in self._families.items():
            lines.extend(fam.render(merged[name]))
        return ("\n".join(lines) + "\n").encode("utf-8")

    def http_response(
        self, others: Iterable[Snapshot] = ()
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``(200, headers, body)`` for ``GET /metrics``."""
        return 200, [(b"content-type", _CONTENT_TYPE), (b"cache-control", b"no-store")], \
            self.render(others)


def _with(fam: _Family, values: dict[Labels, Any]) -> _Family:
    clone = _Family(fam.name, fam.kind, fam.help, fam.buckets)
    clone.values = values
    return clone


# -- the session observer ---------------------------------------------------------------------
class _Turn:
    __slots__ = ("audio", "flushed", "started_at")

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.audio = False
        self.flushed = False  # multi: a flush was sent; more text starts the next cycle


def _tail(text: str) -> dict[str, Any]:
    """The small fields after an audio frame's base64 payload (which never holds a quote)."""
    i = text.rfind('","enc":')
    try:
        obj = json.loads('{"' + text[i + 3 :]) if i > 0 else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


_AUDIO_META = re.compile(r'"sr":(\d+),"samples":(\d+)')


def _audio_seconds(text: str) -> float:
    """``samples / sr`` of an audio frame, read after its base64 payload (no JSON parse)."""
    m = _AUDIO_META.search(text, max(0, text.rfind('","enc":')))
    if m is None:
        return 0.0
    sr = int(m.group(1))
    return int(m.group(2)) / sr if sr > 0 else 0.0


def _loads(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


class ObservedSession:
    """Wraps a server session; forwards every call unchanged and feeds :class:`Metrics`.

    ``now`` for outgoing messages is the latest ``now`` the session was handed (the connection
    drains the outbox right after each call). With ``metrics=None`` it only logs error frames.
    """

    def __init__(
        self, session: Any, path: str, metrics: Metrics | None, peer: str = ""
    ) -> None:
        self._s = session
        self._m = metrics
        self._peer = peer
        self.label = _ENDPOINTS.get(path, path)
        self._now = 0.0
        self._open = True
        self._from_receive = False  # the outbox being drained answers a client message
        self._received_text = False
        #: stream: the open turn; tts: requests in order; multi: the open cycle per context
        self._turn: _Turn | None = None
        self._seen_turns = 0
        self._requests: deque[_Turn] = deque()
        self._cycles: dict[str | None, deque[_Turn]] = {}
        self._opened_cycle: list[tuple[str | None, _Turn]] = []
        #: per-session figures (also in the close log line)
        self.turns = 0
        self.errors = 0
        if metrics is not None:
            metrics.session_opened(self.label)

    # -- forwarding ------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    @property
    def wrapped(self) -> Any:
        return self._s

    @property
    def close_code(self) -> int | None:
        code: int | None = self._s.close_code
        return code

    def next_deadline(self) -> float | None:
        deadline: float | None = self._s.next_deadline()
        return deadline

    def handle_timeout(self, now: float) -> None:
        self._now = now
        self._from_receive = False
        self._s.handle_timeout(now)

    def send_audio(self, ref: Any, pcm: bytes, now: float) -> bool:
        self._now = now
        self._from_receive = False
        ok: bool = self._s.send_audio(ref, pcm, now)
        return ok

    def complete_chunk(self, ref: Any, gen_ms: float, now: float) -> bool:
        self._now = now
        self._from_receive = False
        ok: bool = self._s.complete_chunk(ref, gen_ms, now)
        return ok

    def fail_chunk(self, ref: Any, message: str, now: float) -> bool:
        self._now = now
        self._from_receive = False
        ok: bool = self._s.fail_chunk(ref, message, now)
        return ok

    def shutdown(self, now: float, code: int = 1012) -> None:
        self._now = now
        self._from_receive = False
        self._s.shutdown(now, code)

    def receive_message(self, text: str, now: float) -> None:
        self._now = now
        self._received_text = False
        self._from_receive = True
        self._opened_cycle.clear()
        m = self._m
        if m is not None and (
            self.label == "multi" or (self.label == "tts" and '"text"' in text)
        ):
            self._inbound(text, now)
        try:
            self._s.receive_message(text, now)
        except Exception as exc:  # a core that raises instead of answering: count it
            code = getattr(exc, "error_code", None)
            if isinstance(code, str):
                self._on_error({"error_code": code, "code": getattr(exc, "code", None)})
            raise

    def messages_to_send(self) -> list[str]:
        out: list[str] = self._s.messages_to_send()
        m = self._m
        if m is None:
            for text in out:
                if text.startswith('{"error"'):
                    self._on_error(_loads(text))
            return out
        if self.label == "stream":
            self._stream_started()
        for text in out:
            self._outbound(m, text)
        if self.label == "stream" and self._turn is None:
            self._stream_started()
        return out

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self._now = now
        self._s.connection_lost(code, reason, now)
        if not self._open:
            return
        self._open = False
        m = self._m
        if m is None:
            return
        self._stream_started()
        pending = [*self._requests, *(t for q in self._cycles.values() for t in q)]
        if self._turn is not None:
            pending.append(self._turn)
        for _ in pending:
            self._finish(m, "disconnected")
        self._turn = None
        self._requests.clear()
        self._cycles.clear()
        m.session_closed(self.label)

    # -- turn bookkeeping ------------------------------------------------------------------
    def _begin(self) -> _Turn:
        assert self._m is not None
        self._m.turn_started(self.label)
        return _Turn(self._now)

    def _finish(self, m: Metrics, outcome: str) -> None:
        self.turns += 1
        m.turn_finished(self.label, outcome)

    def _stream_started(self) -> None:
        """A stream turn begins when the core says so (``turns_started``)."""
        started = int(getattr(self._s, "turns_started", self._seen_turns))
        if started > self._seen_turns and self._turn is None:
            self._seen_turns += 1
            self._turn = self._begin()

    def _inbound(self, text: str, now: float) -> None:
        obj = _loads(text)
        value = obj.get("text")
        if self.label == "tts":
            if isinstance(value, str):
                self._requests.append(self._begin())
                self._received_text = True
            return
        cid = obj.get("context_id")
        key = cid if isinstance(cid, str) else None
        queue = self._cycles.get(key)
        if isinstance(value, str) and value:
            if queue is None:
                queue = self._cycles[key] = deque()
            if not queue or queue[-1].flushed:
                turn = self._begin()
                queue.append(turn)
                self._opened_cycle.append((key, turn))
        if queue and obj.get("flush") is True:
            queue[-1].flushed = True

    def _current(self, obj: Mapping[str, Any] | None, text: str = "") -> _Turn | None:
        if self.label == "stream":
            return self._turn
        if self.label == "tts":
            return self._requests[0] if self._requests else None
        if obj is None:
            obj = _tail(text)
        cid = obj.get("context_id")
        queue = self._cycles.get(cid if isinstance(cid, str) else None)
        return queue[0] if queue else None

    def _end(self, m: Metrics, obj: Mapping[str, Any], outcome: str) -> bool:
        """End the turn a terminal frame belongs to; False when none was open."""
        if self.label == "stream":
            if self._turn is None:
                self._stream_started()
            if self._turn is None:
                return False
            self._turn = None
        elif self.label == "tts":
            if not self._requests:
                return False
            self._requests.popleft()
        else:
            cid = obj.get("context_id")
            key = cid if isinstance(cid, str) else None
            queue = self._cycles.get(key)
            if not queue:
                return False
            if outcome == "completed":
                queue.popleft()  # one final per flushed cycle, in order
                self._finish(m, outcome)
            else:  # interrupted / closed: every cycle of the context ends
                for _ in queue:
                    self._finish(m, outcome)
                queue.clear()
            if not queue:
                del self._cycles[key]
            return True
        self._finish(m, outcome)
        return True

    def _outbound(self, m: Metrics, text: str) -> None:
        if text.startswith('{"audio"'):
            seconds = _audio_seconds(text)
            if seconds:
                m.audio(self.label, seconds)
            turn = self._current(None, text)
            if turn is not None and not turn.audio:
                turn.audio = True
                m.first_audio(self.label, self._now - turn.started_at)
        elif text.startswith('{"chunk_complete"'):
            obj = _loads(text)
            gen_ms, secs = obj.get("gen_ms"), obj.get("audio_seconds")
            if isinstance(gen_ms, (int, float)) and isinstance(secs, (int, float)):
                m.engine(self.label, gen_ms / 1000, float(secs))
        elif text.startswith('{"final"'):
            obj = _loads(text)
            if self.label == "tts":
                gen_ms, dur_ms = obj.get("gen_ms"), obj.get("dur_ms")
                if isinstance(gen_ms, (int, float)) and isinstance(dur_ms, (int, float)):
                    m.engine(self.label, gen_ms / 1000, dur_ms / 1000)
            self._end(m, obj, "completed")
        elif text.startswith('{"interrupted"'):
            obj = _loads(text)
            if self.label == "multi" and "context_id" not in obj:
                for key in list(self._cycles):  # a cancel of every context
                    self._end(m, {"context_id": key}, "interrupted")
            else:
                self._end(m, obj, "interrupted")
        elif text.startswith('{"error"'):
            obj = _loads(text)
            self._on_error(obj)
            self._error_ends_turn(m, obj)
        elif text.startswith(('{"context_closed"', '{"context_timeout"')):
            self._end(m, _loads(text), "closed")

    def _error_ends_turn(self, m: Metrics, obj: Mapping[str, Any]) -> None:
        """A refused request or cycle: ``/ws/tts`` requests end with one error frame (an engine
        failure, ``INTERNAL_ERROR``, does not end it); a multi cycle opened by the refused text."""
        if self.label == "tts":
            if obj.get("error_code") == "INTERNAL_ERROR" or not self._requests:
                return
            if self._from_receive and self._received_text:
                # the text just received was refused (queue full, bad text): the newest one
                self._requests.pop()
                self._finish(m, "error")
            elif not self._from_receive:
                self._end(m, obj, "error")  # a queued request failed its checks when it began
        elif self.label == "multi" and self._from_receive and self._opened_cycle:
            for key, turn in self._opened_cycle:  # the text that would have begun it was refused
                queue = self._cycles.get(key)
                if queue and turn in queue:
                    queue.remove(turn)
                    self._finish(m, "error")
                    if not queue:
                        del self._cycles[key]
            self._opened_cycle.clear()

    def _on_error(self, obj: Mapping[str, Any]) -> None:
        code = obj.get("error_code")
        error_code = code if isinstance(code, str) else "UNKNOWN"
        self.errors += 1
        if self._m is not None:
            self._m.error(self.label, error_code)
        log.info(
            "error endpoint=%s error_code=%s code=%s context_id=%s peer=%s",
            self.label, error_code, obj.get("code"), obj.get("context_id"), self._peer,
            extra={"kugelwire_event": "error", "endpoint": self.label,
                   "error_code": error_code, "peer": self._peer},
        )


def name_peer(session: Any, peer: str) -> None:
    """Name the client of an observed session in its log lines (a runner's one call)."""
    if isinstance(session, ObservedSession):
        session._peer = peer


def observe(session: Any, path: str, metrics: Metrics | None, peer: str = "") -> Any:
    """Wrap a freshly created server session (None stays None)."""
    return None if session is None else ObservedSession(session, path, metrics, peer)


# -- connection glue: one call each from a runner ------------------------------------------
def connection_opened(metrics: Metrics | None, peer: str, now: float) -> None:
    """A TCP connection was accepted (logged at INFO; counted when metrics are on)."""
    if metrics is not None:
        metrics.connection_opened(now)
    log.info("open peer=%s", peer, extra={"kugelwire_event": "open", "peer": peer})


def connection_closed(
    metrics: Metrics | None,
    peer: str,
    session: Any,
    code: int | None,
    reason: str,
    opened_at: float,
    now: float,
) -> None:
    """The TCP connection is gone: one INFO line with its endpoint, close code and figures."""
    if metrics is not None:
        metrics.connection_closed(now)
    endpoint = getattr(session, "label", "-") if session is not None else "-"
    turns = getattr(session, "turns", 0) if isinstance(session, ObservedSession) else 0
    errors = getattr(session, "errors", 0) if isinstance(session, ObservedSession) else 0
    duration = max(0.0, now - opened_at)
    log.info(
        "close peer=%s endpoint=%s code=%s reason=%r turns=%d errors=%d duration_s=%.3f",
        peer, endpoint, code, reason, turns, errors, duration,
        extra={"kugelwire_event": "close", "peer": peer, "endpoint": endpoint,
               "close_code": code, "turns": turns, "errors": errors, "duration_s": duration},
    )


def request_rejected(
    metrics: Metrics | None, peer: str, status: int, path: str, reason: str, now: float
) -> None:
    """An HTTP answer other than an accepted upgrade (``reason="http"``: a plain GET served,
    not counted as rejected). ``path`` never includes the query (where an API key may be)."""
    if reason == "http":
        log.debug("http peer=%s path=%s status=%d", peer, path, status)
        return
    if metrics is not None:
        metrics.rejected(status, reason, now)
    log.info(
        "rejected peer=%s path=%s status=%d reason=%s", peer, path, status, reason,
        extra={"kugelwire_event": "rejected", "peer": peer, "path": path, "status": status,
               "reason": reason},
    )


def metrics_handler(metrics: Metrics, fallback: HttpHandler | None) -> HttpHandler:
    """An HTTP handler answering :data:`METRICS_PATH` from ``metrics`` and every other path
    through ``fallback`` (e.g. the playground). Like the playground it needs no API key: the
    figures hold no secrets (no key, no text, no peer addresses)."""

    def handler(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if path == METRICS_PATH:
            others = metrics.others() if metrics.others is not None else ()
            return metrics.http_response(others)
        return fallback(path) if fallback is not None else None

    return handler
