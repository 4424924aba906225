"""Fault injection: a declarative plan of misbehaviour the server applies per connection.

A :class:`FaultPlan` is a list of :class:`Fault` s, each written ``KIND[:ARG][,key=value...]``
(``kugelwire serve --fault restart:after=3``, ``faults=["reject:429"]``, the
``kugelwire_faults`` pytest marker). :class:`FaultyConnection` is a
:class:`~kugelwire.protocol.ServerConnection` that applies the plan: it counts the audio frames
of every turn, holds output until deadlines (``delay``, ``stall``, ``slow_handshake``), injects
error frames and close codes, answers upgrades with an HTTP rejection, and asks its adapter for
a TCP reset through :attr:`FaultyConnection.abort_requested`.

Pure like the rest of the core: no sockets, no clocks (time is the ``now`` the adapter passes),
and randomness (``delay`` jitter) comes from a seeded generator per connection, so a plan
misbehaves the same way on every run.

Vocabulary: a *turn* is one stream turn, one ``/ws/tts`` request or one multi-context flush
cycle, as seen on the wire: it starts with its first audio frame and ends at ``final``,
``session_closed``, ``interrupted`` or ``context_closed``. ``after=N`` counts that turn's audio
frames (1-based); ``after=0`` fires instead of the turn's first audio frame. ``turn=T`` picks the
T-th turn of the connection (1-based) and ``conn=C`` the C-th WebSocket connection of the server
(1-based, default: every connection).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import h11

from ..protocol.messages import dumps
from ..protocol.ws import STREAM_ENDPOINT, ConnectionState, MessageSession, ServerConnection
from ..protocol.ws import header_value as _header

__all__ = [
    "ERROR_CLOSE_CODES",
    "FAULT_KINDS",
    "Fault",
    "FaultPlan",
    "FaultyConnection",
    "server_connection",
]

#: error_code -> (HTTP-like code, close code, message) of the service's fatal errors.
ERROR_CLOSE_CODES: dict[str, tuple[int, int, str]] = {
    "RATE_LIMITED": (429, 4029, "Rate limit exceeded"),
    "INSUFFICIENT_CREDITS": (402, 4003, "Insufficient credits"),
    "MODEL_UNAVAILABLE": (503, 4500, "Model overloaded, please try again later."),
    "INTERNAL_ERROR": (500, 4000, "Audio generation failed"),
    "UNAUTHORIZED": (401, 4001, "Unauthorized"),
}
_BY_STATUS = {status: name for name, (status, _, _) in ERROR_CLOSE_CODES.items()}

#: HTTP status -> (error_code, message) of a rejected upgrade.
_REJECTIONS: dict[int, tuple[str, str]] = {
    400: ("VALIDATION_ERROR", "Invalid request"),
    401: ("UNAUTHORIZED", "Unauthorized"),
    402: ("INSUFFICIENT_CREDITS", "Insufficient credits"),
    403: ("UNAUTHORIZED", "Forbidden"),
    429: ("RATE_LIMITED", "Rate limit exceeded"),
    500: ("INTERNAL_ERROR", "Internal error"),
    503: ("MODEL_UNAVAILABLE", "The requested model is temporarily unavailable."),
}

#: Each kind, what it does, and the client behaviour it rehearses (``kugelwire serve`` prints
#: these; the docs' fault table is checked against them).
FAULT_KINDS: dict[str, tuple[str, str]] = {
    "drop": (
        "reset the TCP connection (RST, no close frame) after N audio frames of turn T",
        "a network drop mid-turn: notice the dead socket, reconnect, replay only the unspoken "
        "text, never duplicate audio",
    ),
    "restart": (
        "close with 1012 after N audio frames of turn T (at=handshake: accept, then close 1013)",
        "a rolling deploy: reconnect after a short wait and replay the turn",
    ),
    "stall": (
        "stop sending after N audio frames of turn T; the socket stays open (for ms, or for "
        "ever)",
        "a silent server: a receive timeout fires instead of hanging the agent",
    ),
    "delay": (
        "hold every frame for ms (+ a seeded random jitter of up to jitter ms)",
        "a slow network or overloaded server: playback buffering, no spurious timeouts",
    ),
    "error": (
        "send an error frame (RATE_LIMITED, INSUFFICIENT_CREDITS, MODEL_UNAVAILABLE, "
        "INTERNAL_ERROR, UNAUTHORIZED) at audio frame N of turn T (or at=handshake), then close "
        "with its 4xxx code",
        "a typed error reaches the application (retry after retry_after, stop on credits)",
    ),
    "reject": (
        "answer the WebSocket upgrade with HTTP STATUS (401, 403, 429, 503, ...), with "
        "x-request-id and, for 429/503, Retry-After",
        "a refused connection: a typed handshake error; back off on 429",
    ),
    "slow_handshake": (
        "answer the upgrade only after ms",
        "a slow connect: connect timeouts and pre-connecting at startup",
    ),
}

_KEYS = {
    "drop": {"after", "turn", "conn"},
    "restart": {"after", "turn", "conn", "at"},
    "stall": {"after", "turn", "conn", "ms"},
    "delay": {"ms", "jitter", "seed", "conn"},
    "error": {"code", "after", "turn", "conn", "at", "retry_after"},
    "reject": {"status", "conn", "retry_after"},
    "slow_handshake": {"ms", "conn"},
}
#: What a bare ``KIND:ARG`` sets.
_POSITIONAL = {
    "drop": "after",
    "restart": "after",
    "stall": "after",
    "delay": "ms",
    "error": "code",
    "reject": "status",
    "slow_handshake": "ms",
}
_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:[:,](.*))?$", re.DOTALL)


def _number(kind: str, key: str, raw: str, *, integer: bool, lo: float) -> float:
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        what = "an integer" if integer else "a number"
        raise ValueError(f"fault {kind}: {key} must be {what}, not {raw!r}") from None
    if not value >= lo or value != value or value == float("inf"):
        raise ValueError(f"fault {kind}: {key} must be >= {lo:g}, not {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Fault:
    """One entry of a fault plan; build it with :meth:`parse` (see the module docstring)."""

    kind: str
    after: int = 1  # audio frames of the turn before the fault fires (0: instead of the first)
    turn: int = 1
    conn: int | None = None  # only this WebSocket connection of the server (1-based)
    at: str = "audio"  # "audio" | "handshake" (restart -> 1013, error right after accept)
    ms: float | None = None  # delay / stall duration / slow_handshake
    jitter: float = 0.0
    seed: int = 0
    error_code: str = ""
    status: int = 0
    retry_after: float | None = None
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND[:ARG][,key=value...]``, e.g. ``restart:after=3``, ``reject:429``,
        ``delay:ms=50,jitter=20,seed=7``, ``error:RATE_LIMITED,retry_after=2,turn=2``."""
        m = _SPEC.match(spec)
        if m is None:
            raise ValueError(f"fault {spec!r}: expected KIND[:ARG][,key=value...]")
        kind, rest = m.group(1), (m.group(2) or "").strip()
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"fault {spec!r}: unknown kind {kind!r} (one of {', '.join(FAULT_KINDS)})"
            )
        values: dict[str, str] = {}
        for i, item in enumerate(p.strip() for p in rest.split(",") if rest):
            if not item:
                raise ValueError(f"fault {spec!r}: empty option")
            key, eq, value = item.partition("=")
            if not eq:
                if i:
                    raise ValueError(f"fault {spec!r}: {item!r} must be key=value")
                key, value = _POSITIONAL[kind], item
            key = key.strip().replace("-", "_")
            if key not in _KEYS[kind]:
                raise ValueError(
                    f"fault {spec!r}: unknown option {key!r} for {kind} "
                    f"(options: {', '.join(sorted(_KEYS[kind]))})"
                )
            if key in values:
                raise ValueError(f"fault {spec!r}: {key} given twice")
            values[key] = value.strip()
        return cls._build(kind, values, spec.strip())

    @classmethod
    def _build(cls, kind: str, values: dict[str, str], spec: str) -> Fault:
        f = cls(kind, spec=spec, after=0 if kind == "error" else 1)

        def num(key: str, *, integer: bool = True, lo: float = 0) -> float | None:
            raw = values.get(key)
            return None if raw is None else _number(kind, key, raw, integer=integer, lo=lo)

        changes: dict[str, Any] = {}
        for key, lo in (("after", 0), ("turn", 1), ("conn", 1), ("seed", 0)):
            value = num(key, lo=lo)
            if value is not None:
                changes[key] = int(value)
        for key in ("ms", "jitter"):
            value = num(key, integer=False)
            if value is not None:
                changes[key] = value
        at = values.get("at")
        if at is not None:
            allowed = ("audio", "handshake", "turn_end") if kind == "restart" else (
                "audio", "handshake")
            if at not in allowed:
                raise ValueError(
                    f"fault {spec!r}: at must be {' or '.join(repr(a) for a in allowed)}, "
                    f"not {at!r}"
                )
            changes["at"] = at
        raw_retry = values.get("retry_after")
        if raw_retry is not None and raw_retry.lower() != "none":
            changes["retry_after"] = _number(kind, "retry_after", raw_retry, integer=False, lo=0)
        if kind == "error":
            raw = values.get("code", "RATE_LIMITED").upper()
            if raw.isdigit() and int(raw) in _BY_STATUS:
                raw = _BY_STATUS[int(raw)]
            if raw not in ERROR_CLOSE_CODES:
                raise ValueError(
                    f"fault {spec!r}: unknown error {raw!r} "
                    f"(one of {', '.join(ERROR_CLOSE_CODES)})"
                )
            changes["error_code"] = raw
            if raw_retry is None and raw in ("RATE_LIMITED", "MODEL_UNAVAILABLE"):
                changes["retry_after"] = 1.0
        if kind == "reject":
            status = int(_number(kind, "status", values.get("status", "429"), integer=True, lo=0))
            if not 400 <= status <= 599:
                raise ValueError(f"fault {spec!r}: status must be a 4xx or 5xx HTTP status")
            changes["status"] = status
            if raw_retry is None and status in (429, 503):
                changes["retry_after"] = 1.0
        if kind == "delay" and "ms" not in changes:
            raise ValueError(f"fault {spec!r}: delay needs ms (e.g. delay:ms=50)")
        if kind == "slow_handshake" and "ms" not in changes:
            changes["ms"] = 1000.0
        return replace(f, **changes)

    @property
    def fires_on_audio(self) -> bool:
        return self.kind in ("drop", "restart", "stall", "error") and self.at == "audio"

    @property
    def fires_at_turn_end(self) -> bool:
        return self.kind == "restart" and self.at == "turn_end"

    def describe(self) -> str:
        """One line: what this fault does (with its numbers)."""
        k = self.kind
        where = f"after {self.after} audio frame(s) of turn {self.turn}"
        if self.after == 0:
            where = f"before the first audio frame of turn {self.turn}"
        if k == "drop":
            text = f"TCP reset {where}"
        elif k == "restart":
            if self.at == "handshake":
                text = "accept, then close 1013 (draining replica)"
            elif self.at == "turn_end":
                text = f"close 1012 right after turn {self.turn} ends (a graceful restart)"
            else:
                text = f"close 1012 {where}"
        elif k == "stall":
            how = "for ever" if self.ms is None else f"for {self.ms:g} ms"
            text = f"stop sending {where}, {how} (socket stays open)"
        elif k == "delay":
            jitter = f" + 0..{self.jitter:g} ms jitter (seed {self.seed})" if self.jitter else ""
            text = f"hold every frame {self.ms:g} ms{jitter}"
        elif k == "error":
            status, close, _ = ERROR_CLOSE_CODES[self.error_code]
            point = "right after the handshake" if self.at == "handshake" else where
            retry = "" if self.retry_after is None else f", retry_after {self.retry_after:g}"
            text = f"error {self.error_code} ({status}{retry}) {point}, then close {close}"
        elif k == "reject":
            retry = "" if self.retry_after is None else f" with Retry-After {self.retry_after:g}"
            text = f"reject every upgrade with HTTP {self.status}{retry}"
        else:
            text = f"answer the upgrade after {self.ms:g} ms"
        if self.conn is not None:
            text += f" (connection {self.conn} only)"
        return text

    @property
    def rehearses(self) -> str:
        return FAULT_KINDS[self.kind][1]


@dataclass
class FaultPlan:
    """The faults of a server; :meth:`for_connection` picks those of one connection.

    Also counts the WebSocket connections it has seen (for ``conn=``): share one plan per
    server.
    """

    faults: tuple[Fault, ...] = ()
    connections: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, specs: str | Fault | Iterable[str | Fault] | FaultPlan | None) -> FaultPlan:
        """A plan from specs (one string or several); raises ValueError on a bad spec."""
        if isinstance(specs, FaultPlan):
            return specs
        if specs is None:
            return cls()
        if isinstance(specs, (str, Fault)):
            specs = [specs]
        return cls(tuple(s if isinstance(s, Fault) else Fault.parse(s) for s in specs))

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def next_connection(self) -> tuple[int, tuple[Fault, ...]]:
        """Number the next WebSocket connection; return it with the faults that apply."""
        self.connections += 1
        n = self.connections
        return n, tuple(f for f in self.faults if f.conn is None or f.conn == n)

    def describe(self) -> list[str]:
        """One line per fault: the spec, what it does, what it rehearses."""
        return [f"{f.spec or f.kind}: {f.describe()} — rehearses {f.rehearses}" for f in self]


def _seconds(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


# -- the per-connection machinery ---------------------------------------------------------------
_END_MARKERS = ('"final":true', '"session_closed":true', '"interrupted":true', '"context_closed"')


class _FaultySession:
    """Stands between the connection and the real session: counts audio frames per turn and
    releases, holds, drops or replaces the session's messages as the faults say."""

    def __init__(
        self, inner: MessageSession, faults: Sequence[Fault], rng: random.Random, owner: Any
    ) -> None:
        self._inner = inner
        self._owner: FaultyConnection = owner
        self._armed = [f for f in faults if f.fires_on_audio]
        self._at_turn_end = [f for f in faults if f.fires_at_turn_end]
        self._stream = getattr(inner, "endpoint", "") == STREAM_ENDPOINT
        self._delay = next((f for f in faults if f.kind == "delay"), None)
        self._rng = rng
        self._now = 0.0
        self._held: deque[tuple[float, str]] = deque()  # (release time, message)
        self._last_release = -1e300
        self._turn = 0
        self._frames = 0
        self._turn_over = True
        self._stalled_until: float | None = None  # inf: for ever
        self._dead = False  # a fault fired: nothing of the session goes out any more
        self._close: int | None = None
        self._extra: list[str] = []
        for f in faults:
            if f.at == "handshake" and f.kind == "restart":
                self._close = 1013
                self._dead = True
            elif f.at == "handshake" and f.kind == "error":
                self._fire(f)

    # -- what the runner calls on the session (forwarded with the time noted) -----------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _at(self, now: float) -> None:
        self._now = max(self._now, now)

    def send_audio(self, ref: Any, pcm: bytes, now: float) -> bool:
        self._at(now)
        return bool(self._inner.send_audio(ref, pcm, now))  # type: ignore[attr-defined]

    def send_word_timestamps(self, ref: Any, words: Any, now: float) -> bool:
        self._at(now)
        return bool(self._inner.send_word_timestamps(ref, words, now))  # type: ignore[attr-defined]

    def complete_chunk(self, ref: Any, gen_ms: float, now: float) -> bool:
        self._at(now)
        return bool(self._inner.complete_chunk(ref, gen_ms, now))  # type: ignore[attr-defined]

    def fail_chunk(self, ref: Any, message: str, now: float) -> bool:
        self._at(now)
        return bool(self._inner.fail_chunk(ref, message, now))  # type: ignore[attr-defined]

    def shutdown(self, now: float, code: int = 1012) -> None:
        self._at(now)
        self._inner.shutdown(now, code)  # type: ignore[attr-defined]

    # -- MessageSession -------------------------------------------------------------------
    def receive_message(self, text: str, now: float) -> None:
        self._at(now)
        self._inner.receive_message(text, now)

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        self._at(now)
        self._held.clear()
        self._inner.connection_lost(code, reason, now)

    def next_deadline(self) -> float | None:
        candidates = [self._inner.next_deadline()]
        if self._held and not self._dead:
            stall = self._stalled_until
            if stall is None:
                candidates.append(self._held[0][0])
            elif stall != float("inf"):
                candidates.append(stall)
        best = [d for d in candidates if d is not None]
        return min(best) if best else None

    def handle_timeout(self, now: float) -> None:
        self._at(now)
        deadline = self._inner.next_deadline()
        if deadline is not None and now >= deadline:
            self._inner.handle_timeout(now)

    @property
    def close_code(self) -> int | None:
        if self._close is not None:
            return self._close if not self._extra else None
        if self._held:
            return None  # held frames go out before the close
        return self._inner.close_code

    def messages_to_send(self) -> list[str]:
        now = self._now
        for text in self._inner.messages_to_send():
            if self._dead:
                continue
            release = now
            if self._delay is not None:
                ms = (self._delay.ms or 0.0) + self._rng.uniform(0.0, self._delay.jitter)
                release = max(now, self._last_release) + ms / 1000
                self._last_release = release
            self._held.append((release, text))
        out, self._extra = self._extra, []
        while self._held and not self._dead:
            if self._stalled_until is not None:
                if now < self._stalled_until:
                    break
                self._stalled_until = None
            release, text = self._held[0]
            if release > now:
                break
            self._held.popleft()
            self._release(text, out)
        out += self._extra
        self._extra = []
        return out

    def _release(self, text: str, out: list[str]) -> None:
        if text.startswith('{"audio"'):
            if self._turn_over:
                self._turn += 1
                self._frames = 0
                self._turn_over = False
            if self._frames == 0:
                for f in list(self._armed):
                    if f.after == 0 and f.turn == self._turn:
                        self._fire(f)
                        if self._dead:
                            return  # the frame is never sent
                        if self._stalled_until is not None:
                            self._held.appendleft((self._now, text))  # sent when it resumes
                            return
            out.append(text)
            self._frames += 1
            for f in list(self._armed):
                if f.after and f.after == self._frames and f.turn == self._turn:
                    self._fire(f)
            return
        ended = any(marker in text for marker in _END_MARKERS)
        if ended:
            self._turn_over = True
        out.append(text)
        if ended and not (self._stream and '"final":true' in text):  # stream: final first
            for f in list(self._at_turn_end):
                if f.turn == self._turn:
                    self._at_turn_end.remove(f)
                    self._dead = True
                    self._held.clear()
                    self._close = 1012

    def _fire(self, fault: Fault) -> None:
        if fault in self._armed:
            self._armed.remove(fault)
        kind = fault.kind
        if kind == "stall":
            self._stalled_until = (
                float("inf") if fault.ms is None else self._now + fault.ms / 1000
            )
            return
        self._dead = True
        self._held.clear()
        if kind == "drop":
            self._owner._abort = True
        elif kind == "restart":
            self._close = 1012
        elif kind == "error":
            status, close, message = ERROR_CLOSE_CODES[fault.error_code]
            frame: dict[str, Any] = {
                "error": message,
                "error_code": fault.error_code,
                "code": status,
                "request_id": self._owner.request_id,
            }
            if fault.retry_after is not None:
                ra = fault.retry_after
                frame["retry_after"] = int(ra) if ra.is_integer() else ra
            self._extra.append(dumps(frame))
            self._close = close


class FaultyConnection(ServerConnection):
    """A :class:`~kugelwire.protocol.ServerConnection` that misbehaves as ``plan`` says.

    Same interface, plus :attr:`abort_requested`: when it turns True the adapter must reset
    the TCP connection at once (after writing what :meth:`data_to_send` returned), e.g. asyncio
    ``SO_LINGER (1, 0)`` then ``transport.abort()``.
    """

    def __init__(
        self,
        route: Callable[[str], MessageSession | None],
        *,
        faults: FaultPlan,
        now: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(self._faulty_route, now=now, **kwargs)
        self._plan = faults
        self._real_route = route
        self._faults: tuple[Fault, ...] = ()
        self._conn_number = 0
        self._abort = False
        self._hold_until: float | None = None
        self._held_bytes = bytearray()
        self._fault_now = now

    @property
    def abort_requested(self) -> bool:
        """True once a ``drop`` fault fired: reset the TCP connection now."""
        return self._abort

    @property
    def connection_number(self) -> int:
        """This connection's number among the server's WebSocket connections (0: none)."""
        return self._conn_number

    @property
    def state(self) -> ConnectionState:
        if self._held_bytes:
            return ConnectionState.CONNECTING  # the response is still held back
        return super().state

    def _faulty_route(self, path: str) -> MessageSession | None:
        session = self._real_route(path)
        if session is None:
            return None
        rng = random.Random(f"{self._seed()}:{self._conn_number}")
        return _FaultySession(session, self._faults, rng, self)

    def _seed(self) -> int:
        return next((f.seed for f in self._faults if f.kind == "delay"), 0)

    def _on_request(self, request: h11.Request) -> None:
        upgrade = _header(list(request.headers), b"upgrade")
        if upgrade is not None and b"websocket" in upgrade.lower():
            self._conn_number, self._faults = self._plan.next_connection()
            for f in self._faults:
                if f.kind == "slow_handshake":
                    self._hold_until = self._fault_now + (f.ms or 0.0) / 1000
            reject = next((f for f in self._faults if f.kind == "reject"), None)
            if reject is not None:
                self._reject(request, reject)
                return
        super()._on_request(request)

    def _reject(self, request: h11.Request, fault: Fault) -> None:
        self._handshake_deadline = None
        self._path = request.target.decode("ascii", "replace").partition("?")[0]
        error_code, message = _REJECTIONS.get(fault.status, ("REJECTED", "Rejected"))
        body = dumps({"error": message, "error_code": error_code, "code": fault.status}).encode()
        headers: list[tuple[bytes, bytes]] = []
        if fault.retry_after is not None:
            headers.append((b"retry-after", _seconds(fault.retry_after).encode("ascii")))
        self._http_reject(fault.status, "fault", body, headers)

    # -- time and held output -------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        self._fault_now = now
        super().receive_data(data, now)

    def handle_timeout(self, now: float) -> None:
        self._fault_now = now
        super().handle_timeout(now)

    def next_deadline(self) -> float | None:
        deadline = super().next_deadline()
        if self._hold_until is not None and (deadline is None or self._hold_until < deadline):
            return self._hold_until
        return deadline

    def data_to_send(self) -> bytes:
        data = super().data_to_send()
        if self._hold_until is not None:
            self._held_bytes += data
            if self._fault_now < self._hold_until:
                return b""
            self._hold_until = None
            data, self._held_bytes = bytes(self._held_bytes), bytearray()
        return data


def server_connection(
    route: Callable[[str], MessageSession | None],
    *,
    faults: FaultPlan | None,
    now: float,
    **kwargs: Any,
) -> ServerConnection:
    """A :class:`FaultyConnection` when ``faults`` has any, else a plain ServerConnection."""
    if faults:
        return FaultyConnection(route, faults=faults, now=now, **kwargs)
    return ServerConnection(route, now=now, **kwargs)
