"""Exceptions raised by the sans-IO core.

Two families, as in h11: :class:`LocalProtocolError` means *you* (the caller) asked the core to do
something the protocol does not allow; :class:`RemoteProtocolError` means the *peer* sent something
invalid.  Both carry the wire's own vocabulary (``error_code`` and the HTTP-like ``code``) so a
server can turn a :class:`RemoteProtocolError` straight into an error frame.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error the protocol core raises.

    ``field`` names the offending JSON field (dotted for nested values, e.g.
    ``voice_settings.voice_id``) when one is to blame; ``error_code``/``code`` are the wire's
    error category and HTTP-like status (protocol.md#error-codes).
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        error_code: str = "VALIDATION_ERROR",
        code: int = 400,
        context_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.error_code = error_code
        self.code = code
        self.context_id = context_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, field={self.field!r}, "
            f"error_code={self.error_code!r}, code={self.code!r})"
        )


class LocalProtocolError(ProtocolError):
    """The application asked for something the protocol forbids (e.g. a second flush on a turn)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that violates the protocol (bad JSON, wrong types, bad ranges)."""
