"""The client's log lines, with :mod:`logging`: once per connection or turn, never per frame.

Logger ``kugelwire.client``: one line per connection open (INFO) and close (INFO, WARNING when
it ended in an error), per reconnect (INFO) and per error frame (WARNING). Logger
``kugelwire.client.turns``: at DEBUG, one line per finished turn or context. Every line has
structured fields in ``extra`` (``kugelwire_event`` names the line) and never shows the API key.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from ..errors import KugelwireError
from ..protocol.events import ContextClosed, Reconnecting, ServerError, TurnMetrics
from ..protocol.ws import ClientConnection
from ._ending import Ending

__all__ = ["ClientLog"]

_API_KEY_IN_QUERY = re.compile(r"(api_key=)[^&#\s'\"]*", re.IGNORECASE)

_log = logging.getLogger("kugelwire.client")
# A library's logs are the application's to show: without a configured handler they go nowhere
# (not to Python's last-resort stderr handler, which would print warnings into a CLI's output).
_log.addHandler(logging.NullHandler())
_turn_log = logging.getLogger("kugelwire.client.turns")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class ClientLog:
    """The log lines of one client (its ``endpoint``), with ``api_key`` masked in all of them."""

    __slots__ = ("_api_key", "endpoint")

    def __init__(self, endpoint: str, api_key: str | None) -> None:
        self.endpoint = endpoint
        self._api_key = api_key

    def redact(self, text: str) -> str:
        """``text`` without the API key (given, percent-encoded, or in a URL's query)."""
        key = self._api_key
        if key:
            text = text.replace(key, "***").replace(quote(key, safe=""), "***")
        return _API_KEY_IN_QUERY.sub(r"\1***", text)

    def _fields(self, conn: ClientConnection) -> dict[str, Any]:
        host, port = conn.address
        return {"endpoint": self.endpoint, "peer": f"{host}:{port}"}

    def open(self, conn: ClientConnection, connection: int) -> None:
        """``conn`` (the ``connection``-th of this client, from 0) completed its upgrade."""
        if not _log.isEnabledFor(logging.INFO):
            return
        fields = self._fields(conn)
        _log.info(
            "open endpoint=%s peer=%s secure=%s connection=%d", fields["endpoint"],
            fields["peer"], conn.secure, connection,
            extra={"kugelwire_event": "open", **fields, "connection": connection},
        )

    def close(
        self,
        conn: ClientConnection,
        connection: int,
        ending: Ending,
        error: KugelwireError | None,
        *,
        now: float,
        attempt_at: float,
        opened_at: float | None,
    ) -> None:
        """``conn`` is over, as ``ending`` says (``error``: what its work raises); its attempt
        began at ``attempt_at``, its upgrade completed at ``opened_at`` (None: never)."""
        level = logging.INFO if error is None else logging.WARNING
        if not _log.isEnabledFor(level):
            return
        closed, rejection = ending.closed, ending.rejection
        code = None if closed is None else closed.code
        reason = self.redact(closed.reason) if closed is not None else ""
        status = None if rejection is None else rejection.status_code
        start = opened_at if opened_at is not None else attempt_at
        duration = max(0.0, now - start)
        what = None if error is None else self.redact(f"{type(error).__name__}: {error.message}")
        fields = self._fields(conn)
        _log.log(
            level,
            "close endpoint=%s peer=%s code=%s reason=%r connected=%s duration_s=%.3f%s%s",
            fields["endpoint"], fields["peer"], code, reason, opened_at is not None,
            duration, "" if status is None else f" http_status={status}",
            "" if what is None else f" error={what!r}",
            extra={"kugelwire_event": "close", **fields, "code": code, "reason": reason,
                   "http_status": status, "connected": opened_at is not None,
                   "duration_s": duration, "error": what, "connection": connection},
        )

    def reconnect(self, conn: ClientConnection, event: Reconnecting) -> None:
        if not _log.isEnabledFor(logging.INFO):
            return
        fields = self._fields(conn)
        reason = self.redact(event.reason)
        _log.info(
            "reconnect endpoint=%s peer=%s attempt=%d code=%s reason=%r delay_s=%.3f replayed=%s",
            fields["endpoint"], fields["peer"], event.attempt, event.code, reason, event.delay,
            ",".join(event.replayed) or "-",
            extra={"kugelwire_event": "reconnect", **fields, "attempt": event.attempt,
                   "code": event.code, "reason": reason, "delay_s": event.delay,
                   "replayed": event.replayed},
        )

    def error(self, conn: ClientConnection, event: ServerError) -> None:
        if not _log.isEnabledFor(logging.WARNING):
            return
        fields = self._fields(conn)
        message = self.redact(event.message)
        _log.warning(
            "error endpoint=%s peer=%s error_code=%s status=%s message=%r turn=%s "
            "context_id=%s fatal=%s",
            fields["endpoint"], fields["peer"], event.code.value, event.status, message,
            event.turn, event.context_id, event.fatal,
            extra={"kugelwire_event": "error", **fields, "error_code": event.code.value,
                   "status": event.status, "error_message": message, "turn": event.turn,
                   "context_id": event.context_id, "fatal": event.fatal},
        )

    def turn(self, event: Any) -> None:
        """A turn (or a context, or one of its cycles) finished with ``event.metrics``."""
        if not _turn_log.isEnabledFor(logging.DEBUG):
            return
        m: TurnMetrics = event.metrics
        what = "context" if isinstance(event, ContextClosed) else "turn"
        _turn_log.debug(
            "%s endpoint=%s turn=%d context_id=%s ttfa_s=%s flush_ttfa_s=%s audio_s=%.3f "
            "chunks=%d cancelled=%s reconnects=%d",
            what, self.endpoint, m.turn, m.context_id, _seconds(m.time_to_first_audio),
            _seconds(m.flush_to_first_audio), m.audio_seconds, m.audio_chunks, m.cancelled,
            m.reconnects,
            extra={"kugelwire_event": what, "endpoint": self.endpoint, "metrics": m},
        )
