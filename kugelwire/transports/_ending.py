"""How a client connection ended, and when to try again: no I/O, no clock.

:class:`Ending` records the facts of one connection's end as they arrive (the upgrade's
rejection, the close, the fatal error frame, the failed connect, the adapter's I/O verdict) and
answers what the client core asks of them: was it a clean end, is it worth a restart or
reconnect, the reason in words, and the typed exception of :mod:`kugelwire.errors` that each
unfinished piece of work raises. :class:`Backoff` is the retry policy: how many attempts in a
row, and how long to wait before each (deterministic given its ``random``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionFailed,
    KugelwireError,
    LocalProtocolError,
    ProtocolViolation,
    RateLimitError,
    ServerErrorResponse,
    ServerRestarting,
)
from ..protocol.events import ErrorCode, Reconnecting, ServerError
from ..protocol.sessions import WorkKey
from ..protocol.ws import RESTART_CODES as _RESTART
from ..protocol.ws import ConnectionClosed, HandshakeRejected

__all__ = ["Backoff", "Ending"]


class Ending:
    """The facts of how one connection ended (or is ending); a fresh instance per connection.

    Each fact is set once it is known: :attr:`rejection` (the upgrade's HTTP answer),
    :attr:`closed` (the connection's close), :attr:`fatal` (a fatal error frame),
    :attr:`connect_exc` (opening the socket failed) and :attr:`io_error` (the adapter gave up).
    """

    __slots__ = ("closed", "connect_exc", "fatal", "io_error", "rejection")

    def __init__(self) -> None:
        self.rejection: HandshakeRejected | None = None
        self.closed: ConnectionClosed | None = None
        self.fatal: ServerError | None = None
        self.connect_exc: BaseException | None = None
        self.io_error: KugelwireError | None = None

    @property
    def clean(self) -> bool:
        """A normal close (1000 / 1001, no error of any kind): nothing to raise after a
        ``close()`` the application asked for."""
        closed = self.closed
        return (
            self.connect_exc is None
            and self.io_error is None
            and self.rejection is None
            and closed is not None
            and closed.error is None
            and closed.code in (1000, 1001)
        )

    @property
    def restart_close(self) -> bool:
        """The server closed with a restart code (1012 / 1013)."""
        return self.closed is not None and self.closed.code in _RESTART

    @property
    def retry_after(self) -> float | None:
        """The upgrade's ``Retry-After``, if it was rejected with one."""
        return None if self.rejection is None else self.rejection.retry_after

    def record(self, event: HandshakeRejected | ConnectionClosed) -> None:
        """The connection's verdict: the upgrade was rejected, or it closed."""
        if isinstance(event, HandshakeRejected):
            self.rejection = event
        else:
            self.closed = event

    def reconnecting(
        self, attempt: int, delay: float, replayed: Collection[WorkKey | None]
    ) -> Reconnecting:
        """The log event of a retry after this end: ``attempt`` in a row, after ``delay``,
        sending the work of ``replayed`` (work keys) again."""
        return Reconnecting(
            attempt=attempt,
            close_code=None if self.closed is None else self.closed.close_code,
            reason=self.reason,
            delay=delay,
            replayed=tuple(sorted(str(k) for k in replayed)),
        )

    def retryable(self, *, reconnect: bool, reconnecting: bool) -> bool:
        """Worth a restart (1012/1013, HTTP 503) or, with ``reconnect``, a reconnect after a
        drop; ``reconnecting``: this connection was itself a retry."""
        rejection = self.rejection
        if rejection is not None:
            if rejection.kind == "restarting":
                return True
            return reconnect and rejection.kind not in ("auth", "rate_limited") and (
                rejection.status_code >= 500
            )
        if self.restart_close:
            return True
        return reconnect and self._dropped_for_reconnect(reconnecting)

    def _dropped_for_reconnect(self, reconnecting: bool) -> bool:
        """A drop worth reconnecting for: TCP reset / EOF (no close frame), 1001, 1006, 1011
        (including our own keepalive ping timeout), 1014, a 4xxx that is not about credentials
        or rate limits, a failed connect while reconnecting, or the server not reading
        (:class:`~kugelwire.errors.SendBufferFull`). Protocol violations are not retried."""
        if self.connect_exc is not None:
            return reconnecting
        if self.io_error is not None:
            return True
        closed, fatal = self.closed, self.fatal
        if closed is None or closed.error is not None:
            return False
        if fatal is not None and fatal.code in (ErrorCode.UNAUTHORIZED, ErrorCode.RATE_LIMITED):
            return False
        code = closed.code
        return (
            code is None
            or code in (1001, 1006, 1011, 1014)
            or (4000 <= code < 5000 and code not in (4001, 4003, 4029))
        )

    @property
    def reason(self) -> str:
        """How it ended, in words (a reconnect's ``reason``)."""
        if self.connect_exc is not None:
            return f"connect failed: {self.connect_exc}"
        if self.io_error is not None:
            return self.io_error.message
        if self.rejection is not None:
            return f"HTTP {self.rejection.status_code} at the upgrade"
        closed = self.closed
        if closed is None or closed.code is None:
            return "connection dropped (no close frame)"
        return f"close {closed.code}{': ' + closed.reason if closed.reason else ''}"

    def error(self, unspoken: str, *, state: str, url: str) -> KugelwireError:
        """The exception for how the connection ended (a fresh instance each call), carrying
        ``unspoken``; ``state``: the client's (``"connecting"``, ``"reconnecting"``...),
        ``url``: the one to name in messages (its API key masked)."""
        rejection, closed, fatal = self.rejection, self.closed, self.fatal
        exc = self.connect_exc
        error: KugelwireError
        io_error = self.io_error
        if io_error is not None:
            error = type(io_error)(io_error.message)
            error.__cause__ = io_error.__cause__
        elif exc is not None:
            error = ConnectionFailed(f"cannot connect to {url}: {exc}")
            error.__cause__ = exc
        elif rejection is not None:
            msg = f"HTTP {rejection.status_code} at the upgrade: {rejection.message}"
            if rejection.kind == "auth":
                error = AuthenticationError(msg, status_code=rejection.status_code)
            elif rejection.kind == "rate_limited":
                error = RateLimitError(
                    msg, retry_after=rejection.retry_after, status_code=rejection.status_code
                )
            elif rejection.kind == "restarting":
                error = ServerRestarting(msg, unspoken_text=unspoken)
            else:
                error = ConnectionFailed(msg, status_code=rejection.status_code)
        elif closed is None:
            error = ConnectionClosedError("the connection is closed", unspoken_text=unspoken)
        elif closed.error is not None:
            error = ProtocolViolation(f"the server broke the protocol: {closed.error.message}",
                                      error=closed.error)
            error.__cause__ = closed.error
        else:
            code, reason = closed.code, closed.reason
            msg = f"connection closed (code {code}{': ' + reason if reason else ''})"
            if code == 4001 or (fatal is not None and fatal.code is ErrorCode.UNAUTHORIZED):
                error = AuthenticationError(msg, close_code=code)
            elif code == 4029 or (fatal is not None and fatal.code is ErrorCode.RATE_LIMITED):
                error = RateLimitError(
                    msg, retry_after=fatal.retry_after if fatal else None, close_code=code
                )
            elif code in _RESTART:
                error = ServerRestarting(msg, code=code, reason=reason, unspoken_text=unspoken)
            elif fatal is not None:
                error = ServerErrorResponse(fatal)
            elif state == "connecting" and code is None:
                error = ConnectionFailed(f"cannot connect to {url}: {reason}")
            else:
                error = ConnectionClosedError(
                    msg, code=code, reason=reason, unspoken_text=unspoken
                )
        if state == "reconnecting" and not isinstance(
            error, AuthenticationError | RateLimitError | ServerRestarting
        ):
            restarting = ServerRestarting(
                f"server restarting and the reconnect failed: {error.message}",
                unspoken_text=unspoken,
            )
            restarting.__cause__ = error
            error = restarting
        error.unspoken_text = unspoken
        return error


class Backoff:
    """The retry policy: at most :meth:`allows` attempts in a row, each after :meth:`delay`.

    Without ``reconnect`` only restarts (1012/1013, HTTP 503) are retried, ``max_restarts`` in
    a row, each after ``restart_delay``. With it drops are retried too, ``max_reconnects`` in
    a row, after a bounded exponential backoff with jitter (``reconnect_delay`` doubling per
    attempt up to ``max_reconnect_delay``, times half to all of it drawn from ``random``);
    restart closes keep ``restart_delay``. A ``Retry-After`` always wins.
    """

    __slots__ = ("max_reconnect_delay", "max_reconnects", "max_restarts", "random", "reconnect",
                 "reconnect_delay", "restart_delay")

    def __init__(
        self,
        *,
        reconnect: bool,
        restart_delay: float,
        max_restarts: int,
        max_reconnects: int,
        reconnect_delay: float,
        max_reconnect_delay: float,
        random: Callable[[], float],
    ) -> None:
        if max_reconnects < 0 or reconnect_delay < 0 or max_reconnect_delay < reconnect_delay:
            raise LocalProtocolError(
                "need max_reconnects >= 0 and 0 <= reconnect_delay <= max_reconnect_delay"
            )
        self.reconnect = reconnect
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.random = random

    def allows(self, in_row: int) -> bool:
        """Another attempt after ``in_row`` attempts in a row without output."""
        return in_row < (self.max_reconnects if self.reconnect else self.max_restarts)

    def delay(self, attempt: int, *, retry_after: float | None, restart_close: bool) -> float:
        """How long to wait before attempt number ``attempt`` (1: the first in a row)."""
        if retry_after is not None:
            return retry_after
        if not self.reconnect or restart_close:
            return self.restart_delay
        # bounded exponential backoff with jitter (half to all of the step)
        step = self.reconnect_delay * 2.0 ** max(0, attempt - 1)
        return min(self.max_reconnect_delay, step) * (0.5 + 0.5 * self.random())
