"""Byte-level WebSocket connections (client and server) over wsproto, sans-IO.

A connection object turns bytes from the socket into complete text messages for a
:class:`MessageSession` (one of the message-level protocol sessions) and turns the session's
outbox into framed bytes for the socket.  It owns everything below the message level: the HTTP
upgrade (URL, auth, rejections), framing and fragmentation, message-size limits, UTF-8 checks,
pings/pongs and keepalive, and the close handshake.

Driving loop (the same for both roles)::

    conn.receive_data(chunk, now)        # b"" = the peer closed its end (EOF)
    sock.sendall(conn.data_to_send())    # after every call that may produce output
    for event in conn.events(): ...      # Connected / HandshakeRejected / Accepted / ...
    deadline = conn.next_deadline()      # call conn.handle_timeout(now) when it passes

Once ``conn.state is ConnectionState.CLOSED`` and ``data_to_send()`` has been flushed, the
transport closes the socket.  Every connection reports exactly one :class:`ConnectionClosed`
event, and calls ``session.connection_lost`` exactly once (when it had a session).

Nothing here reads a clock: every time-dependent call takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeAlias, TypeVar, cast
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as _WSState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as _WSRemoteProtocolError

from . import _fast
from ._constants import AI_GENERATED_HEADER as _AI_HEADER
from ._constants import ENDPOINTS, TTS_ENDPOINT
from ._constants import NOT_FOUND_ERROR as _NOT_FOUND
from ._constants import UNAUTHORIZED_ERROR as _UNAUTHORIZED
from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import dumps as _json

__all__ = [
    "ENDPOINTS",
    "FRAGMENT_COST",
    "MESSAGE_TIMEOUT",
    "Accepted",
    "ClientConnection",
    "ClientConnectionEvent",
    "Connected",
    "ConnectionClosed",
    "ConnectionEvent",
    "ConnectionState",
    "HandshakeRejected",
    "Headers",
    "HttpHandler",
    "MessageSession",
    "Rejected",
    "RejectionKind",
    "RestHandler",
    "ServerConnection",
    "ServerConnectionEvent",
    "authorized",
    "build_url",
]

Headers: TypeAlias = tuple[tuple[bytes, bytes], ...]
HeaderInput: TypeAlias = Iterable[tuple[str | bytes, str | bytes]]
#: ``http_handler(path) -> (status, headers, body)`` for plain (non-upgrade) GET requests, or
#: ``None`` for 404.
HttpHandler: TypeAlias = Callable[[str], tuple[int, list[tuple[bytes, bytes]], bytes] | None]
#: ``rest_handler(path, query) -> (status, headers, body)`` for authorized ``GET /v1/...``
#: requests (the read-only REST routes), or ``None`` for 404.
RestHandler: TypeAlias = Callable[
    [str, str], tuple[int, list[tuple[bytes, bytes]], bytes] | None
]
RejectionKind: TypeAlias = Literal["auth", "rate_limited", "restarting", "not_found", "other"]

_MAX_REJECT_BODY = 64 * 1024
_BINARY_ERROR_MESSAGE = "Binary frames are not supported; send JSON text frames"
#: Each fragment of a message but its last counts this many bytes on top of its payload
#: towards ``max_message_size`` (a frame costs its receiver about as much work as that many
#: bytes), so a flood of tiny (even empty) fragments is bounded like bytes.
FRAGMENT_COST = 256
#: A message (or a frame) must be complete this many seconds after its first byte arrived.
MESSAGE_TIMEOUT = 30.0


class MessageSession(Protocol):
    """What a connection needs from a message-level session (client or server side)."""

    def receive_message(self, text: str, now: float) -> None:
        """One complete WebSocket text message.  May raise :class:`RemoteProtocolError`."""

    def messages_to_send(self) -> list[str]:
        """Drain the outbox (JSON texts)."""
        ...

    def next_deadline(self) -> float | None: ...

    def handle_timeout(self, now: float) -> None: ...

    def connection_lost(self, code: int | None, reason: str, now: float) -> None:
        """The socket is gone (close code, or None for EOF/abort).  Called exactly once."""

    @property
    def close_code(self) -> int | None:
        """Non-None when the session wants the socket closed once its outbox is sent."""
        ...


class ConnectionState(Enum):
    CONNECTING = "connecting"  # opening handshake in progress
    OPEN = "open"
    CLOSING = "closing"  # we sent a close frame and wait for the peer's
    CLOSED = "closed"  # done: flush data_to_send(), then close the socket


# -- events --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connected:
    """Client: the server accepted the upgrade (``headers``: the 101 response's headers)."""

    headers: Headers
    subprotocol: str | None = None


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """Client: the server answered the upgrade with an HTTP error (a ConnectionClosed follows)."""

    status_code: int
    headers: Headers
    body: bytes
    retry_after: float | None = None  # from ``Retry-After`` (delta-seconds form only)
    request_id: str | None = None  # from ``x-request-id``

    @property
    def kind(self) -> RejectionKind:
        if self.status_code in (401, 403):
            return "auth"
        if self.status_code == 429:
            return "rate_limited"
        if self.status_code == 503:
            return "restarting"
        if self.status_code == 404:
            return "not_found"
        return "other"

    def _body_json(self) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return obj if isinstance(obj, dict) else None

    @property
    def error_code(self) -> str | None:
        """``error_code`` of a JSON error body (protocol.md#error-envelope), if there is one."""
        obj = self._body_json()
        value = obj.get("error_code") if obj else None
        return value if isinstance(value, str) else None

    @property
    def message(self) -> str:
        """``error`` of a JSON error body, else the HTTP reason phrase."""
        obj = self._body_json()
        value = obj.get("error") if obj else None
        if isinstance(value, str):
            return value
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return f"HTTP {self.status_code}"


@dataclass(frozen=True, slots=True)
class Accepted:
    """Server: the upgrade on ``path`` was accepted; ``session`` now handles its messages."""

    path: str
    session: MessageSession


@dataclass(frozen=True, slots=True)
class Rejected:
    """Server: the request was refused (HTTP status, or 401 for an accept-and-close-4001)."""

    status_code: int
    path: str
    reason: str = ""  # "unauthorized" | "not_found" | "bad_request" | "method" | "http"


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over (always the last event, exactly once).

    ``close_code`` is the close code of the close handshake (the peer's when ``by_peer``, ours
    otherwise), or None when the TCP connection ended without one (EOF, handshake failure,
    handshake timeout, rejection).  ``error`` is set when a peer protocol error caused it.
    """

    close_code: int | None
    reason: str
    by_peer: bool
    error: RemoteProtocolError | None = None

    @property
    def code(self) -> int | None:
        """Deprecated alias of :attr:`close_code`."""
        return self.close_code


ClientConnectionEvent: TypeAlias = Connected | HandshakeRejected | ConnectionClosed
ServerConnectionEvent: TypeAlias = Accepted | Rejected | ConnectionClosed
ConnectionEvent: TypeAlias = Connected | HandshakeRejected | Accepted | Rejected | ConnectionClosed
_E = TypeVar("_E", ClientConnectionEvent, ServerConnectionEvent)


# -- URLs ------------------------------------------------------------------------------------------
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def _ws_scheme(scheme: str) -> str:
    try:
        return _SCHEMES[scheme.lower()]
    except KeyError:
        msg = f"unsupported URL scheme {scheme!r} (use ws, wss, http or https)"
        raise LocalProtocolError(msg) from None


def build_url(
    base_url: str,
    endpoint: str,
    api_key: str | None = None,
    params: Mapping[str, str] | None = None,
) -> str:
    """The WebSocket URL of ``endpoint`` on ``base_url`` (http→ws, https→wss).

    Every query value is percent-encoded (``safe=""``) so any key round-trips; ``sdk=kugelwire``
    is appended unless ``params`` names ``sdk``.  A path prefix in ``base_url`` is kept.
    """
    if endpoint not in ENDPOINTS:
        raise LocalProtocolError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    parts = urlsplit(base_url)
    scheme = _ws_scheme(parts.scheme)
    if not parts.netloc:
        raise LocalProtocolError(f"base URL {base_url!r} has no host")
    query = [parts.query] if parts.query else []
    if api_key is not None:
        query.append("api_key=" + quote(api_key, safe=""))
    params = dict(params or {})
    params.setdefault("sdk", "kugelwire")
    query.extend(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    path = parts.path.rstrip("/") + endpoint
    return urlunsplit((scheme, parts.netloc, path, "&".join(query), ""))


def _parse_query(query: str) -> list[tuple[str, str, str]]:
    """``(name, form-decoded value, percent-decoded value)`` for each ``name=value`` pair."""
    out = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out.append((unquote_plus(name), unquote_plus(value), unquote(value)))
    return out


def authorized(
    key: bytes | None, query: str, headers: Iterable[tuple[bytes, bytes]], x_api_key: bool = False
) -> bool:
    """Whether an upgrade's query string (``api_key``) or ``Authorization: Bearer`` header
    carries ``key`` (``None``: any key will do); ``x_api_key``: an ``X-API-Key`` header counts
    too (the REST routes). The one auth check of every server adapter."""
    return _authorized(key, _parse_query(query), headers, x_api_key)


def _authorized(
    key: bytes | None,
    params: list[tuple[str, str, str]],
    headers: Iterable[tuple[bytes, bytes]],
    x_api_key: bool = False,
) -> bool:
    """``authorized`` on a parsed query; ``x_api_key``: an ``X-API-Key`` header counts too
    (the REST routes)."""
    if key is None:
        return True
    candidates: list[bytes] = []
    for name, form_value, raw_value in params:
        if name == "api_key":
            # form-decoding turns a literal "+" into a space; try both readings
            candidates += [form_value.encode("utf-8"), raw_value.encode("utf-8")]
    for header, value in headers:
        if header.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                candidates.append(credentials.strip())
        elif x_api_key and header.lower() == b"x-api-key":  # REST only
            candidates.append(value.strip())
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(candidate, key)
    return ok


def _bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def _headers(items: HeaderInput) -> list[tuple[bytes, bytes]]:
    return [(_bytes(name), _bytes(value)) for name, value in items]


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _retry_after(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None  # HTTP-date form: needs a wall clock, which the core does not have
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(seconds, 0.0)


_WS_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")


def _bad_upgrade(http_version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 6455 4.2.1 beyond what wsproto checks: HTTP/1.1 or later, one ``Sec-WebSocket-Key``
    that is the base64 of 16 bytes, and no request body (its bytes would be read as frames)."""
    if http_version == b"1.0":
        return True
    keys = [value for name, value in headers if name.lower() == b"sec-websocket-key"]
    if len(keys) != 1 or not _WS_KEY.fullmatch(keys[0].strip()):
        return True
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


# -- shared machinery ------------------------------------------------------------------------------
class _Connection(Generic[_E]):
    """Framing, message assembly, limits, pings, and the close handshake for both roles."""

    _ws: WSConnection
    #: The events only the other role has (never queued by this one).
    _OTHER_ROLE: ClassVar[tuple[type, ...]] = ()
    #: This role masks its frames (RFC 6455 section 5.3: the client does, the server not).
    _masked: ClassVar[bool] = False

    def __init__(
        self,
        *,
        now: float,
        max_message_size: int,
        close_timeout: float,
        keepalive_interval: float | None = None,
        ping_timeout: float = 20.0,
        message_timeout: float | None = MESSAGE_TIMEOUT,
    ) -> None:
        if max_message_size <= 0:
            raise LocalProtocolError("max_message_size must be positive")
        if message_timeout is not None and message_timeout <= 0:
            raise LocalProtocolError("message_timeout must be positive or None")
        if close_timeout <= 0:
            raise LocalProtocolError("close_timeout must be positive")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise LocalProtocolError("keepalive_interval must be positive or None")
        if ping_timeout <= 0:
            raise LocalProtocolError("ping_timeout must be positive")
        self._keepalive = keepalive_interval
        self._ping_timeout = ping_timeout
        self._ping_at: float | None = None
        self._pong_payload: bytes | None = None
        self._pong_deadline: float | None = None
        self._pings_sent = 0
        self._now = now
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._out = bytearray()
        self._events: deque[ConnectionEvent] = deque()
        self._state = ConnectionState.CONNECTING
        self._session: MessageSession | None = None
        self._parts: list[str] = []
        self._message_size = 0
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_deadline: float | None = None
        self._message_timeout = message_timeout
        self._partial_since: float | None = None  # when the unfinished message/frame began
        self._completed = False  # a message completed during the current receive_data
        self._handshake_deadline: float | None = None  # each role sets its own

    # -- public ----------------------------------------------------------------------------
    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def session(self) -> MessageSession | None:
        return self._session

    @property
    def unsent_size(self) -> int:
        """Bytes framed and not yet taken by :meth:`data_to_send` (the session's queued
        messages are not counted: they are framed when taken)."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Everything to write to the socket now (handshake, framed messages, control frames)."""
        self._flush_session()
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> _E | None:
        """The next event, or None."""
        event = self._events.popleft() if self._events else None
        assert not isinstance(event, self._OTHER_ROLE)
        return cast("_E | None", event)

    def events(self) -> Iterator[_E]:
        """The events so far, oldest first."""
        while (event := self.next_event()) is not None:
            yield event

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (queued session messages go out first).

        Before the handshake completed this just abandons the connection.
        """
        if self._state is ConnectionState.CONNECTING:
            self._finish(None, reason or "closed before the handshake completed", False)
        elif self._state is ConnectionState.OPEN:
            self._flush_session()
            self._start_close(code, reason)

    def next_deadline(self) -> float | None:
        best: float | None = None
        for deadline in self._deadlines():
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if self._state is ConnectionState.CLOSED:
            return
        self._timeouts(now)
        self._partial_timeout(now)
        if self._closed():
            return
        session = self._session
        if session is not None:
            deadline = session.next_deadline()
            if deadline is not None and now >= deadline:
                session.handle_timeout(now)
                self._flush_session()
        if (
            self._state is ConnectionState.CLOSING
            and self._close_deadline is not None
            and now >= self._close_deadline
        ):
            self._finish(self._close_code, self._close_reason, False)

    # -- hooks -----------------------------------------------------------------------------
    def _closed(self) -> bool:
        return self._state is ConnectionState.CLOSED

    def _deadlines(self) -> list[float | None]:
        out: list[float | None] = []
        if self._state is ConnectionState.CLOSED:
            return out
        if self._session is not None:
            out.append(self._session.next_deadline())
        if self._state is ConnectionState.CLOSING:
            out.append(self._close_deadline)
        if self._partial_since is not None and self._message_timeout is not None:
            out.append(self._partial_since + self._message_timeout)
        if self._state is ConnectionState.CONNECTING:
            out.append(self._handshake_deadline)
        elif self._state is ConnectionState.OPEN:
            out.append(self._keepalive_deadline())
        return out

    def _timeouts(self, now: float) -> None:
        """The handshake's timer, then the keepalive's."""
        if self._state is ConnectionState.CONNECTING:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._finish(None, "handshake timeout", False)
        elif self._state is ConnectionState.OPEN:
            self._keepalive_timeout(now)

    def _on_session_error(self, exc: RemoteProtocolError) -> None:
        raise NotImplementedError

    def _on_binary(self, event: BytesMessage) -> None:
        raise NotImplementedError

    def _on_pong(self, payload: bytes) -> None:
        """A pong arrived: it answers our keepalive ping when the payload matches."""
        if self._pong_payload is not None and payload == self._pong_payload:
            self._pong_payload = None
            self._pong_deadline = None
            if self._keepalive is not None:
                self._ping_at = self._now + self._keepalive

    # -- keepalive (both roles) ------------------------------------------------------------
    def _keepalive_traffic(self, now: float) -> None:
        """Frames arrived: the connection is not idle, postpone the next ping."""
        if self._pong_payload is None and self._keepalive is not None:
            self._ping_at = now + self._keepalive

    # -- unfinished messages (both roles) ----------------------------------------------------
    def _busy(self) -> bool:
        """Whether bytes of an unfinished frame or message are held."""
        if self._parts or self._message_size:
            return True
        try:
            proto: Any = getattr(self._ws.connection, "_proto")  # noqa: B009
            frames, messages = proto._frame_decoder, proto._message_decoder
            return (
                frames.header is not None
                or bool(frames.buffer.buffer)
                or messages.opcode is not None
            )
        except AttributeError:  # another wsproto version: what the message counters tell
            return False

    def _after_receive(self, now: float) -> None:
        """Bytes were processed: keepalive and the message deadline see what they completed.

        Only complete frames count as traffic (a drip of bytes into one frame never postpones
        the ping), and a message that started must be complete within ``message_timeout``.
        """
        completed, self._completed = self._completed, False
        if self._state is not ConnectionState.OPEN:
            self._partial_since = None
            return
        busy = self._busy()
        if not busy or completed:
            self._keepalive_traffic(now)
        if not busy:
            self._partial_since = None
        elif self._partial_since is None or completed:
            self._partial_since = now

    def _partial_timeout(self, now: float) -> None:
        since, timeout = self._partial_since, self._message_timeout
        if (
            since is not None
            and timeout is not None
            and self._state is ConnectionState.OPEN
            and now >= since + timeout
        ):
            self._partial_since = None
            reason = f"message not completed within {timeout:g} s"
            self._fail(1008, reason, RemoteProtocolError(reason, error_code="TIMEOUT", code=408))

    def _keepalive_start(self) -> None:
        """The connection just opened: schedule the first ping."""
        if self._keepalive is not None:
            self._ping_at = self._now + self._keepalive

    def _keepalive_deadline(self) -> float | None:
        return self._pong_deadline if self._pong_payload is not None else self._ping_at

    def _keepalive_timeout(self, now: float) -> None:
        """Send the next ping, or fail with 1011 when the last one went unanswered."""
        if self._pong_payload is not None:
            if self._pong_deadline is not None and now >= self._pong_deadline:
                self._fail(1011, "keepalive ping timeout")
        elif self._ping_at is not None and now >= self._ping_at:
            self._pings_sent += 1
            self._pong_payload = self._pings_sent.to_bytes(4, "big")
            self._pong_deadline = now + self._ping_timeout
            self._ping_at = None
            self._send(Ping(payload=self._pong_payload))

    def _on_handshake_event(self, event: Event) -> None:
        """Client only: AcceptConnection / RejectConnection / RejectData."""

    # -- machinery -------------------------------------------------------------------------
    def _send(self, event: Event) -> None:
        self._out += self._ws.send(event)

    def _flush_session(self) -> None:
        """Frame the session's outbox; start closing when the session asks for it. Fast
        path: what wsproto writes for a complete data frame (it keeps no state for one),
        built here: a client's masked frame in one step; a server's frame head, then the
        message's UTF-8 bytes, appended with no copy of the two."""
        session = self._session
        if session is None or self._state is not ConnectionState.OPEN:
            return
        texts = session.messages_to_send()
        if texts and self._ws.state is _WSState.OPEN and _fast.ENABLED:
            out = self._out
            if self._masked:
                for text in texts:
                    out += _fast.masked_text_frame(text.encode())
            else:
                head = _fast.text_frame_head
                for text in texts:
                    data = text.encode()
                    out += head(len(data))
                    out += data
        else:
            for text in texts:
                self._send(TextMessage(data=text))
        code = session.close_code
        if code is not None:
            self._start_close(code, "")

    def _start_close(self, code: int, reason: str) -> None:
        if self._ws.state is not _WSState.OPEN:
            return
        self._send(CloseConnection(code=code, reason=reason))
        self._state = ConnectionState.CLOSING
        self._close_code = code
        self._close_reason = reason
        self._close_deadline = self._now + self._close_timeout

    def _fail(self, code: int, reason: str, error: RemoteProtocolError | None = None) -> None:
        """Fail the WebSocket connection: send a close frame and consider it closed."""
        if self._ws.state is _WSState.OPEN:
            self._send(CloseConnection(code=code, reason=reason))
        self._finish(code, reason, False, error)

    def _finish(
        self,
        code: int | None,
        reason: str,
        by_peer: bool,
        error: RemoteProtocolError | None = None,
    ) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._state = ConnectionState.CLOSED
        self._close_deadline = None
        self._partial_since = None
        self._parts.clear()
        self._events.append(ConnectionClosed(code, reason, by_peer, error))
        if self._session is not None:
            self._session.connection_lost(code, reason, self._now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the socket; ``b""`` means the peer closed its end (EOF)."""
        self._now = now
        if self._state is ConnectionState.CLOSED:
            return
        if self._state is not ConnectionState.CONNECTING:
            self._receive_frames(data)
            self._after_receive(now)
            return
        self._receive_handshake(data, now)

    def _receive_handshake(self, data: bytes, now: float) -> None:
        """Bytes of the opening handshake (the role's HTTP side)."""
        raise NotImplementedError

    def _receive_frames(self, data: bytes) -> None:
        """Bytes after the handshake (OPEN or CLOSING)."""
        if not data:  # EOF
            if self._state is ConnectionState.CLOSING:
                self._finish(self._close_code, self._close_reason, False)
            else:
                self._finish(None, "connection lost", True)
            return
        self._ws.receive_data(data)
        self._process_events()

    def _process_events(self) -> None:
        for event in self._ws.events():
            if self._state is ConnectionState.CLOSED:
                break
            if isinstance(event, TextMessage):
                self._on_text(event)
            elif isinstance(event, BytesMessage):
                if self._state is ConnectionState.OPEN:
                    self._on_binary(event)
            elif isinstance(event, Ping):
                if self._ws.state is _WSState.OPEN:
                    self._send(event.response())
            elif isinstance(event, Pong):
                self._on_pong(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self._on_close(event)
            else:
                self._on_handshake_event(event)
        self._flush_session()

    def _count(self, size: int) -> bool:
        """Add ``size`` bytes to the current message; fail with 1009 if it is too big."""
        self._message_size += size
        if self._message_size > self._max_message_size:
            self._fail(1009, f"message exceeds {self._max_message_size} bytes")
            return False
        return True

    def _on_text(self, event: TextMessage) -> None:
        if self._state is not ConnectionState.OPEN:
            return  # we are closing: late messages are dropped
        piece = event.data
        size = len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        if event.frame_finished and not event.message_finished:
            size += FRAGMENT_COST
        if not self._count(size):
            return
        if piece:
            self._parts.append(piece)
        if event.message_finished:
            text = "".join(self._parts)
            self._parts.clear()
            self._message_size = 0
            self._deliver(text)

    def _deliver(self, text: str) -> None:
        self._completed = True
        session = self._session
        if session is None or self._state is not ConnectionState.OPEN:
            return
        try:
            session.receive_message(text, self._now)
        except RemoteProtocolError as exc:
            self._flush_session()
            self._on_session_error(exc)
            return
        self._flush_session()

    def _on_close(self, event: CloseConnection) -> None:
        ws_state = self._ws.state
        if ws_state is _WSState.REMOTE_CLOSING:  # the peer started the close handshake
            self._send(event.response())
            self._finish(int(event.code), event.reason or "", True)
        elif ws_state is _WSState.CLOSED:  # the peer answered our close frame
            self._finish(self._close_code, self._close_reason, False)
        else:  # wsproto could not parse the peer's bytes: fail with its code (1002, 1007, ...)
            reason = event.reason or "invalid frame"
            self._fail(int(event.code), reason, RemoteProtocolError(f"framing: {reason}"))


# -- client ----------------------------------------------------------------------------------------
class ClientConnection(_Connection[ClientConnectionEvent]):
    """The client side of one WebSocket connection, driving a client ``session``.

    ``url`` is ws(s):// or http(s)://; with ``auth="query"`` a given ``api_key`` is added as the
    ``api_key`` query parameter (percent-encoded), with ``auth="bearer"`` it is sent as
    ``Authorization: Bearer <key>``.  :attr:`address` and :attr:`secure` tell the transport
    where to connect and whether to use TLS.  The session's outbox is held back until the
    handshake completes and sent right after it.
    """

    _masked = True
    _OTHER_ROLE = (Accepted, Rejected)

    def __init__(
        self,
        session: MessageSession,
        url: str,
        *,
        api_key: str | None = None,
        auth: Literal["query", "bearer"] = "query",
        now: float,
        extra_headers: HeaderInput = (),
        keepalive_interval: float | None = 15.0,
        ping_timeout: float = 15.0,
        close_timeout: float = 5.0,
        handshake_timeout: float | None = None,
        max_message_size: int = 16 * 2**20,
        subprotocols: Iterable[str] = (),
        message_timeout: float | None = MESSAGE_TIMEOUT,
        yield_after_audio: bool = False,
    ) -> None:
        super().__init__(
            now=now, max_message_size=max_message_size, close_timeout=close_timeout,
            keepalive_interval=keepalive_interval, ping_timeout=ping_timeout,
            message_timeout=message_timeout,
        )
        #: Stop reading a batch of bytes after an audio frame that follows another message in
        #: it (a turn's first audio, usually: a consumer can have it before the rest of the
        #: batch is parsed); the rest is held for :meth:`receive_held`, which the transport
        #: must call soon (next loop round). Off by default.
        self.yield_after_audio = yield_after_audio
        self._held = False
        if auth not in ("query", "bearer"):
            raise LocalProtocolError(f"auth must be 'query' or 'bearer', not {auth!r}")
        parts = urlsplit(url)
        scheme = _ws_scheme(parts.scheme)
        host = parts.hostname
        if not host:
            raise LocalProtocolError(f"URL {url!r} has no host")
        self._secure = scheme == "wss"
        default_port = 443 if self._secure else 80
        port = parts.port or default_port
        self._address = (host, port)
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        query = parts.query
        headers = []
        if api_key is not None:
            if auth == "query":
                if any(name == "api_key" for name, _, _ in _parse_query(query)):
                    raise LocalProtocolError(
                        "the URL already carries api_key; do not pass it twice"
                    )
                query = (query + "&" if query else "") + "api_key=" + quote(api_key, safe="")
            else:
                headers.append((b"authorization", b"Bearer " + api_key.encode("utf-8")))
        headers.extend(_headers(extra_headers))
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~-._")
        if query:
            target += "?" + quote(query, safe="/?%:@!$&'()*+,;=~-._")
        self._path = parts.path or "/"
        self._session = session
        self._handshake_deadline = None if handshake_timeout is None else now + handshake_timeout
        self._reject: tuple[int, Headers] | None = None
        self._reject_body = bytearray()
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._rx = bytearray()  # fast path: bytes of an incomplete text frame (see _fast_text)
        #: wsproto was seen holding no part of a frame or message and got no bytes since (its
        #: decoder changes only when fed: no need to look inside it again)
        self._ws_idle = False
        self._send(
            Request(
                host=host_header,
                target=target,
                extra_headers=headers,
                subprotocols=list(subprotocols),
            )
        )

    def __repr__(self) -> str:
        host, port = self._address
        scheme = "wss" if self._secure else "ws"
        return f"<ClientConnection {scheme}://{host}:{port}{self._path} {self._state.value}>"

    @property
    def session(self) -> MessageSession:
        assert self._session is not None
        return self._session

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to open the TCP connection to."""
        return self._address

    @property
    def secure(self) -> bool:
        """Whether the transport must use TLS (``wss``)."""
        return self._secure

    @property
    def held(self) -> bool:
        """Complete frames wait for :meth:`receive_held` (see :attr:`yield_after_audio`)."""
        return self._held

    def receive_held(self, now: float) -> None:
        """Go on with the frames held back after an audio frame (see
        :attr:`yield_after_audio`); it may hold back again."""
        if self._held:
            self._held = False
            self._now = now
            if self._state is not ConnectionState.CLOSED:
                self._receive_frames(None)
                self._after_receive(now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the socket; ``b""`` means the server closed its end (EOF)."""
        self._now = now
        if self._held:  # held frames go first: new bytes continue them (they are in _rx)
            self._held = False
            if not data and self._state is not ConnectionState.CLOSED:
                held, self.yield_after_audio = self.yield_after_audio, False
                try:  # all of them, before the EOF
                    self._receive_frames(None)
                finally:
                    self.yield_after_audio = held
        super().receive_data(data, now)

    def _receive_handshake(self, data: bytes, now: float) -> None:
        self._ws_idle = False
        try:
            self._ws.receive_data(data if data else None)
            self._process_events()
        except _WSRemoteProtocolError as exc:
            self._finish(None, f"invalid handshake response: {exc}", False)
            return
        self._after_receive(now)  # frames that came with the 101
        if not data and not self._closed():
            if self._reject is not None:
                self._rejected()
            else:
                self._finish(None, "connection closed during the handshake", True)

    # -- the receive fast path ---------------------------------------------------------------
    def _receive_frames(self, data: bytes | None) -> None:
        """Single-frame text messages (the server's JSON) skip wsproto; anything else (control
        frames, fragments, bad frames) goes to wsproto, which then sits at a frame boundary.
        ``None``: go on with the frames held back (see :attr:`yield_after_audio`)."""
        rx = self._rx
        if data is None or (data and rx):  # frames held back, or the rest of a text frame
            if data:
                rx += data
            pos, fast = self._fast_text(rx)
            del rx[:pos]
            if fast or self._held:
                return
            data = bytes(rx)
            rx.clear()
            if not data:
                return
        elif not data:
            rx.clear()
        elif _fast.ENABLED and self._wsproto_idle():
            pos, fast = self._fast_text(data)
            if fast:
                rx += data[pos:]  # the start of a text frame (usually nothing)
                return
            data = data[pos:]
        if data:
            self._ws_idle = False
        super()._receive_frames(data)

    def _busy(self) -> bool:
        if self._rx or self._parts or self._message_size:
            return True
        return not self._ws_idle and super()._busy()

    def _open(self) -> bool:
        return self._state is ConnectionState.OPEN

    def _wsproto_idle(self) -> bool:
        """OPEN, no message being assembled, and wsproto holds no bytes of a frame."""
        if self._state is not ConnectionState.OPEN or self._parts:
            return False
        if not self._ws_idle:
            self._ws_idle = _fast.wsproto_idle(self._ws)
        return self._ws_idle

    def _fast_text(self, rx: bytes | bytearray) -> tuple[int, bool]:
        """Deliver the complete unmasked ``FIN`` text frames at the head of ``rx``; return how
        many bytes they took and whether the rest is for the fast path too (nothing, or the
        start of such a frame) rather than for wsproto (any other frame, or one wsproto must
        reject: non-minimal length, too big, bad UTF-8)."""
        session = self._session
        if session is None:
            return 0, False
        receive = session.receive_message
        hold = self.yield_after_audio
        other = False  # a message other than audio came first in this batch
        pos = 0
        now = self._now
        with memoryview(rx) as view:
            frames, fast = _fast.text_frames(rx, view, self._max_message_size)
            if frames and self._state is not ConnectionState.OPEN:
                frames, fast = [], False
            for start, stop in frames:
                try:
                    text = rx[start:stop].decode()
                except UnicodeDecodeError:
                    fast = False  # wsproto closes with 1007
                    break
                pos = stop
                try:
                    receive(text, now)
                except RemoteProtocolError as exc:
                    self._completed = True
                    self._flush_session()
                    self._on_session_error(exc)  # no longer OPEN: the loop stops
                    if stop != frames[-1][1]:
                        fast = False
                    break
                if hold:
                    if not text.startswith('{"audio"'):
                        other = True
                    elif other and pos < len(rx):  # a first audio, most likely: deliver it now
                        self._held = True
                        fast = True  # the rest waits in _rx
                        break
            if fast and not self._held and pos < len(rx) and not self._open():
                fast = False  # the start of a frame, no longer OPEN: wsproto's
        if pos:
            self._completed = True  # as _deliver says, once per batch
            self._flush_session()  # once per batch (a client session never closes by itself)
        return pos, fast

    # -- hooks -----------------------------------------------------------------------------
    def _on_handshake_event(self, event: Event) -> None:
        if isinstance(event, AcceptConnection):
            self._state = ConnectionState.OPEN
            self._handshake_deadline = None
            self._keepalive_start()
            self._events.append(Connected(tuple(event.extra_headers), event.subprotocol))
            self._flush_session()
        elif isinstance(event, RejectConnection):
            self._reject = (event.status_code, tuple(event.headers))
            if not event.has_body:
                self._rejected()
        elif isinstance(event, RejectData):
            room = _MAX_REJECT_BODY - len(self._reject_body)
            self._reject_body += event.data[: max(room, 0)]
            if event.body_finished:
                self._rejected()

    def _rejected(self) -> None:
        assert self._reject is not None
        status, headers = self._reject
        request_id = _header(headers, b"x-request-id")
        self._events.append(
            HandshakeRejected(
                status_code=status,
                headers=headers,
                body=bytes(self._reject_body),
                retry_after=_retry_after(_header(headers, b"retry-after")),
                request_id=request_id.decode("latin-1") if request_id is not None else None,
            )
        )
        self._finish(None, f"handshake rejected: HTTP {status}", True)

    def _on_session_error(self, exc: RemoteProtocolError) -> None:
        self._fail(1002, exc.message[:120], exc)

    def _on_binary(self, event: BytesMessage) -> None:
        reason = "binary frames are not supported"
        self._fail(1003, reason, RemoteProtocolError(reason))

    def next_deadline(self) -> float | None:
        """The earliest of :meth:`_deadlines`, without building the list (it is asked after
        every command and every socket read)."""
        if self._state is not ConnectionState.OPEN:
            return super().next_deadline()
        session = self._session
        best = None if session is None else session.next_deadline()
        if self._partial_since is not None and self._message_timeout is not None:
            partial = self._partial_since + self._message_timeout
            if best is None or partial < best:
                best = partial
        keepalive = self._pong_deadline if self._pong_payload is not None else self._ping_at
        if keepalive is not None and (best is None or keepalive < best):
            best = keepalive
        return best



# -- server ----------------------------------------------------------------------------------------
class ServerConnection(_Connection[ServerConnectionEvent]):
    """The server side of one accepted TCP connection.

    ``route(path)`` (path without query, not percent-decoded) returns a new session for a
    WebSocket endpoint, or None for 404.  With ``api_key`` set, the upgrade must carry it as the
    ``api_key`` query parameter or ``Authorization: Bearer``; a missing/bad key gets HTTP 401
    (``auth_failure="http"``) or is accepted, sent an ``UNAUTHORIZED`` error frame and closed
    with 4001 (``auth_failure="close"``).  ``api_key=None`` accepts any key.  A plain
    (non-upgrade) GET is passed to ``http_handler`` (404 when it is None or returns None).
    With ``keepalive_interval`` set, an open connection that was silent that long is pinged and
    failed with 1011 when the pong does not come within ``ping_timeout`` (a dead peer).
    """

    _OTHER_ROLE = (Connected, HandshakeRejected)

    def __init__(
        self,
        route: Callable[[str], MessageSession | None],
        *,
        api_key: str | None = None,
        now: float,
        max_message_size: int = 2**20,
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
        auth_failure: Literal["http", "close"] = "http",
        extra_response_headers: HeaderInput = (),
        http_handler: HttpHandler | None = None,
        max_request_size: int = 16 * 1024,
        keepalive_interval: float | None = None,
        ping_timeout: float = 20.0,
        rest_handler: RestHandler | None = None,
        request_id: str | None = None,
        message_timeout: float | None = MESSAGE_TIMEOUT,
    ) -> None:
        super().__init__(
            now=now,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            keepalive_interval=keepalive_interval,
            ping_timeout=ping_timeout,
            message_timeout=message_timeout,
        )
        if api_key == "":
            raise LocalProtocolError("api_key must be a non-empty string or None")
        if auth_failure not in ("http", "close"):
            raise LocalProtocolError(
                f"auth_failure must be 'http' or 'close', not {auth_failure!r}"
            )
        self._route = route
        self.__key = api_key.encode("utf-8") if api_key is not None else None
        self._auth_failure = auth_failure
        self._response_headers = [_AI_HEADER, *_headers(extra_response_headers)]
        self._http_handler = http_handler
        self._rest_handler = rest_handler
        #: This connection's id: ``x-request-id`` of every HTTP response and ``request_id`` of
        #: every error frame (the session's too, see ``bind_request_id``).
        self.request_id = request_id or "req_" + secrets.token_hex(8)
        self._handshake_deadline = now + handshake_timeout
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_size)
        self._max_request_size = max_request_size
        self._head_bytes = 0  # bytes received before the request head was parsed
        self._ws = WSConnection(ConnectionType.SERVER)
        self._path = ""
        self._head = False  # the request is a HEAD: its answers carry no body

    def __repr__(self) -> str:
        return f"<ServerConnection {self._path or '-'} {self._state.value}>"

    @property
    def path(self) -> str:
        """The request path (empty until the request head has arrived)."""
        return self._path

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the socket; ``b""`` means the client closed its end (EOF)."""
        super().receive_data(data, now)

    def _receive_handshake(self, data: bytes, now: float) -> None:
        self._head_bytes += len(data)
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if not data:
                self._finish(None, "connection closed during the handshake", True)
            else:
                self._http_reject(exc.error_status_hint, "bad_request", b"")
            return
        if isinstance(event, h11.Request):
            self._on_request(event)
            self._after_receive(now)
        elif isinstance(event, h11.ConnectionClosed) or not data:
            self._finish(None, "connection closed during the handshake", True)

    # -- the opening handshake -------------------------------------------------------------
    def _on_request(self, request: h11.Request) -> None:
        self._handshake_deadline = None
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        self._path = path
        self._head = request.method == b"HEAD"
        headers = list(request.headers)
        upgrade = _header(headers, b"upgrade")
        if upgrade is None or b"websocket" not in upgrade.lower():
            if self._rest_handler is not None and path.startswith("/v1/"):
                self._on_rest_request(request.method, path, query, headers)
                return
            self._on_http_request(request.method, path)
            return
        if self._refuse_upgrade(request, headers):
            return
        self._on_upgrade(path, _parse_query(query), headers)
        trailing, closed = self._h11.trailing_data
        if trailing and self._state is not ConnectionState.CLOSED:
            self._receive_frames(trailing)
        if closed and self._state is not ConnectionState.CLOSED:
            self._receive_frames(b"")

    def _refuse_upgrade(self, request: h11.Request, headers: list[tuple[bytes, bytes]]) -> bool:
        """Answer an upgrade request that is not a well-formed WebSocket handshake with its
        HTTP error; True if it was refused."""
        if request.method != b"GET":  # RFC 6455 4.1: the opening handshake is a GET
            self._http_reject(405, "method", b"", [(b"allow", b"GET")])
            return True
        head_size = self._head_bytes - len(self._h11.trailing_data[0])
        if head_size > self._max_request_size:
            self._http_reject(431, "bad_request", b"")
            return True
        if _bad_upgrade(request.http_version, headers):
            self._http_reject(400, "bad_request", b"")
            return True
        try:
            self._ws.initiate_upgrade_connection(headers, request.target)
            for _ in self._ws.events():
                pass  # the wsproto Request event: the upgrade is well-formed
        except _WSRemoteProtocolError as exc:
            hint = exc.event_hint
            status, extra = 400, []
            if isinstance(hint, RejectConnection):
                status, extra = hint.status_code, list(hint.headers)
            self._http_reject(status, "bad_request", b"", extra)
            return True
        except (h11.ProtocolError, UnicodeDecodeError):
            # an HTTP/1.0 upgrade without Host; wsproto decodes Connection/Upgrade as ASCII
            self._http_reject(400, "bad_request", b"")
            return True
        return False

    def _on_upgrade(
        self, path: str, params: list[tuple[str, str, str]], headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A well-formed upgrade: authorize, route to a session and accept (or refuse)."""
        if not self._authorized(params, headers):
            if self._auth_failure == "http":
                self._http_reject(401, "unauthorized", _json(_UNAUTHORIZED).encode())
                return
            self._accept(None, "")
            self._events.append(Rejected(401, path, "unauthorized"))
            self._send(TextMessage(data=_json({**_UNAUTHORIZED, "request_id": self.request_id})))
            self._start_close(4001, "Unauthorized")
            return
        session = self._route(path)
        if session is None:
            self._http_reject(404, "not_found", _json(_NOT_FOUND).encode())
            return
        bind = getattr(session, "bind_request_id", None)
        if bind is not None:
            bind(self.request_id)
        initial = ""
        if path == TTS_ENDPOINT:
            initial = next((v for n, v, _ in params if n == "initial_message"), "")
        self._accept(session, initial)

    def _authorized(
        self,
        params: list[tuple[str, str, str]],
        headers: list[tuple[bytes, bytes]],
        x_api_key: bool = False,
    ) -> bool:
        return _authorized(self.__key, params, headers, x_api_key)

    def _accept(self, session: MessageSession | None, initial_message: str) -> None:
        headers = [*self._response_headers, (b"x-request-id", self.request_id.encode("ascii"))]
        self._send(AcceptConnection(extra_headers=headers))
        self._state = ConnectionState.OPEN
        self._keepalive_start()
        self._session = session
        if session is not None:
            self._events.append(Accepted(self._path, session))
            if initial_message:
                self._deliver(initial_message)

    def _http_reject(
        self,
        status: int,
        reason: str,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        all_headers = [*headers, (b"x-request-id", self.request_id.encode("ascii"))]
        if body:
            all_headers.append((b"content-type", b"application/json"))
        if self._head:  # the length the body would have, no body (RFC 9110 9.3.2)
            all_headers.append((b"content-length", str(len(body)).encode("ascii")))
            body = b""
        self._out += _fast.http_response(self._h11, status, all_headers, body)
        self._events.append(Rejected(status, self._path, reason))
        self._finish(None, f"rejected: HTTP {status}", False)

    def _on_http_request(self, method: bytes, path: str) -> None:
        """A plain HTTP request (no upgrade): the hook for serving static files later."""
        if method not in (b"GET", b"HEAD"):
            self._out += _fast.http_response(
                self._h11, 405, [(b"allow", b"GET, HEAD"), self._request_id_header], b""
            )
            self._events.append(Rejected(405, path, "method"))
            self._finish(None, "rejected: HTTP 405", False)
            return
        response = self._http_handler(path) if self._http_handler is not None else None
        if response is None:
            self._http_reject(404, "not_found", _json(_NOT_FOUND).encode())
            return
        status, headers, body = response
        if method == b"HEAD":
            if not any(name.lower() == b"content-length" for name, _ in headers):
                headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
            body = b""
        self._out += _fast.http_response(
            self._h11, status, [*headers, self._request_id_header], body
        )
        self._events.append(Rejected(status, path, "http"))
        self._finish(None, f"HTTP {status}", False)

    @property
    def _request_id_header(self) -> tuple[bytes, bytes]:
        return (b"x-request-id", self.request_id.encode("ascii"))

    def _on_rest_request(
        self, method: bytes, path: str, query: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """``GET /v1/...``: the read-only REST routes, with the sockets' auth (and x-api-key)."""
        assert self._rest_handler is not None
        if method not in (b"GET", b"HEAD"):
            self._http_reject(405, "method", b"", [(b"allow", b"GET, HEAD")])
            return
        if not self._authorized(_parse_query(query), headers, x_api_key=True):
            self._http_reject(401, "unauthorized", _json(_UNAUTHORIZED).encode())
            return
        response = self._rest_handler(path, query)
        if response is None:
            self._http_reject(404, "not_found", _json(_NOT_FOUND).encode())
            return
        status, extra, body = response
        all_headers = [*extra, (b"x-request-id", self.request_id.encode("ascii"))]
        if method == b"HEAD":
            all_headers.append((b"content-length", str(len(body)).encode("ascii")))
            body = b""
        self._out += _fast.http_response(self._h11, status, all_headers, body)
        self._events.append(Rejected(status, path, "http"))
        self._finish(None, f"HTTP {status}", False)

    # -- hooks -----------------------------------------------------------------------------
    def _on_session_error(self, exc: RemoteProtocolError) -> None:
        self._queue_error(exc.message, exc.error_code, exc.code, exc.context_id)

    def _queue_error(
        self, message: str, error_code: str, code: int, context_id: str | None = None
    ) -> None:
        if self._ws.state is not _WSState.OPEN:
            return
        frame: dict[str, Any] = {"error": message, "error_code": error_code, "code": code}
        frame["request_id"] = self.request_id
        if context_id:
            frame["context_id"] = context_id
        self._send(TextMessage(data=_json(frame)))

    def _on_binary(self, event: BytesMessage) -> None:
        size = len(event.data)
        if event.frame_finished and not event.message_finished:
            size += FRAGMENT_COST
        if not self._count(size):
            return
        if event.message_finished:
            self._completed = True
            self._message_size = 0
            self._flush_session()
            self._queue_error(_BINARY_ERROR_MESSAGE, "VALIDATION_ERROR", 400)
