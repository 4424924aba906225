"""The WebSocket layer of both roles (wsproto; the upgrade on h11): bytes in, bytes out.

``ClientConnection`` / ``ServerConnection`` wrap a message-level session; their events
(``Connected``, ``HandshakeRejected``, ``Accepted``, ``Rejected``, ``ConnectionClosed``) and
the wire's constants: the endpoints, the restart close codes, the fixed parts of a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._constants import *  # noqa: F403
from ._constants import __all__ as _constants_all
from ._ws import *  # noqa: F403
from ._ws import __all__ as _ws_all
from ._ws import _header, _parse_query

__all__ = sorted({*_ws_all, *_constants_all, "header_value", "parse_query"})

#: ``(name, form-decoded value, percent-decoded value)`` for each ``name=value`` pair of a query.
parse_query = _parse_query


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first header called ``name`` (lower-case bytes), or None."""
    return _header(headers, name)
