"""Typed exceptions raised by the kugelwire transports.

Everything a transport raises is one of these (or :class:`LocalProtocolError` for a misuse of the
API, such as flushing a turn twice): raw ``OSError``, ``ssl.SSLError``, ``TimeoutError``,
``KeyError`` or ``json`` errors never escape.

==========================  ==========================================================
exception                   when
==========================  ==========================================================
:class:`ConnectionFailed`   the socket could not be opened (refused, DNS, TLS, timeout)
:class:`AuthenticationError` HTTP 401/403 at the upgrade, or close code 4001
:class:`RateLimitError`     HTTP 429 at the upgrade, or close code 4029
:class:`ProtocolViolation`  the server broke the protocol (bad frames, framing, audio)
:class:`ConnectionClosedError` the socket closed while work was unfinished
:class:`ServerRestarting`   close 1012/1013 (rolling deploy) after the one replay attempt
:class:`SendBufferFull`     the server stopped reading (outgoing buffer cap / write timeout)
:class:`ServerErrorResponse` an ``error`` frame that failed a request / context / turn
==========================  ==========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from .protocol.events import ErrorCode, ServerError

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "ConnectionFailed",
    "KugelwireError",
    "LocalProtocolError",
    "ProtocolViolation",
    "RateLimitError",
    "RemoteProtocolError",
    "SendBufferFull",
    "ServerErrorResponse",
    "ServerRestarting",
]


class KugelwireError(Exception):
    """Base class of every error a kugelwire transport raises (except LocalProtocolError).

    When the error ends a turn, request or context, ``unspoken_text`` is the text that was sent
    for it but not (provably) spoken, and ``turn`` / ``context_id`` say which one it was.
    """

    unspoken_text: str = ""
    turn: int | None = None
    context_id: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConnectionFailed(KugelwireError):
    """The connection could not be established: refused, DNS failure, TLS failure, timeout,
    or an HTTP error other than auth/rate limit at the upgrade. ``__cause__`` holds the
    underlying OS error when there is one; ``status_code`` the HTTP status of a rejection."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class _Refused(KugelwireError):
    """The server refused the connection: ``status_code`` at the upgrade, or ``close_code``."""

    def __init__(
        self, message: str, *, status_code: int | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.close_code = close_code


class AuthenticationError(_Refused):
    """The server refused the credentials (HTTP 401/403 at the upgrade, or close 4001)."""


class RateLimitError(_Refused):
    """Rate limited (HTTP 429 at the upgrade, or close 4029). ``retry_after`` in seconds
    when the server said."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 status_code: int | None = None, close_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code, close_code=close_code)
        self.retry_after = retry_after


class ProtocolViolation(KugelwireError):
    """The server sent something that breaks the protocol; ``error`` is the core's
    :class:`RemoteProtocolError` (also the ``__cause__``)."""

    def __init__(self, message: str, *, error: RemoteProtocolError | None = None) -> None:
        super().__init__(message)
        self.error = error


class ConnectionClosedError(KugelwireError):
    """The connection closed (``close_code`` None: dropped without a close frame) while this
    work was unfinished. ``unspoken_text`` is what was sent but not (provably) spoken; ``turn``
    / ``context_id`` say which work it was, when the error belongs to one. ``code`` (argument
    and attribute) is the deprecated old name of ``close_code``."""

    def __init__(self, message: str, *, close_code: int | None = None, reason: str = "",
                 unspoken_text: str = "", turn: int | None = None,
                 context_id: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = code if close_code is None else close_code
        self.reason = reason
        self.unspoken_text = unspoken_text
        self.turn = turn
        self.context_id = context_id

    @property
    def code(self) -> int | None:
        """Deprecated alias of :attr:`close_code`."""
        return self.close_code


class ServerRestarting(ConnectionClosedError):
    """Close 1012/1013 (rolling deploy) that the single reconnect-and-replay could not hide:
    the work had audio delivered already, or the reconnect failed too."""


class SendBufferFull(ConnectionClosedError):
    """The server stopped reading: the bytes waiting to be written exceeded ``max_send_buffer``
    or a write made no progress for ``write_timeout`` seconds. The client aborted the
    connection (a peer that takes nothing cannot be closed gracefully); every unfinished turn
    gets its own instance carrying its unspoken text."""


class ServerErrorResponse(KugelwireError):
    """An ``error`` frame that failed this request / context / turn. ``error`` is the typed
    :class:`~kugelwire.protocol.events.ServerError` event; ``error_code`` its typed
    ``error_code``, ``status`` its HTTP-like status (``code``: deprecated alias of
    ``error_code``)."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(f"{error.error_code.value}: {error.message}")
        self.error = error
        self.error_code = error.error_code
        self.status = error.status
        self.context_id = error.context_id
        self.turn = error.turn

    @property
    def code(self) -> ErrorCode:
        """Deprecated alias of :attr:`error_code`."""
        return self.error_code
