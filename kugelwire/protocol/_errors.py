"""Exceptions raised by the sans-IO core.

Two families, as in h11: :class:`LocalProtocolError` means *you* (the caller) asked the core to do
something the protocol does not allow, or passed it a bad argument; :class:`RemoteProtocolError`
means the *peer* sent something invalid.  Both carry the wire's own vocabulary (``error_code``
and the HTTP-like ``status``) so a server can turn a :class:`RemoteProtocolError` straight into
an error frame.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error the protocol core raises.

    ``field`` names the offending JSON field (dotted for nested values, e.g.
    ``voice_settings.voice_id``) when one is to blame; ``error_code`` / ``status`` are the wire's
    error category and HTTP-like status (the ``error_code`` and ``code`` keys of an error frame).
    ``code`` (argument and attribute) is the deprecated old name of ``status``.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        error_code: str = "VALIDATION_ERROR",
        status: int | None = None,
        context_id: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.error_code = error_code
        self.status: int = (code if code is not None else 400) if status is None else status
        self.context_id = context_id

    @property
    def code(self) -> int:
        """Deprecated alias of :attr:`status` (the HTTP-like status)."""
        return self.status

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, field={self.field!r}, "
            f"error_code={self.error_code!r}, status={self.status!r})"
        )


class LocalProtocolError(ProtocolError, ValueError):
    """The application asked for something the protocol forbids (e.g. a second flush on a turn)
    or passed a bad argument (a constructor's option out of range, an unknown endpoint).

    It is also a :class:`ValueError`: a bad argument was always one, so code that catches
    ``ValueError`` around a constructor keeps working.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something that violates the protocol (bad JSON, wrong types, bad ranges)."""
