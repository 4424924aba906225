"""Constants of the wire that several layers share, each defined here once.

The endpoint paths, the close codes of a rolling restart, and the fixed parts of the server's
refusals (the ``x-kugelaudio-ai-generated`` header and the 401/404 error bodies). Sessions,
connections, the server core, the transports and the CLI all import them from here (through
:mod:`kugelwire.protocol` and :mod:`kugelwire.protocol.ws`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "AI_GENERATED_HEADER",
    "ENDPOINTS",
    "ENDPOINT_KINDS",
    "MULTI_ENDPOINT",
    "NOT_FOUND_ERROR",
    "RESTART_CODES",
    "SERVICE_RESTART",
    "STREAM_ENDPOINT",
    "TRY_AGAIN_LATER",
    "TTS_ENDPOINT",
    "UNAUTHORIZED_ERROR",
]

#: One-shot synthesis: one request (``text`` + ``flush``) per ``final``.
TTS_ENDPOINT: Final = "/ws/tts"
#: Streaming turns: tokens unflushed, one flush per turn, ``final`` then ``session_closed``.
STREAM_ENDPOINT: Final = "/ws/tts/stream"
#: Up to 20 concurrent contexts on one socket.
MULTI_ENDPOINT: Final = "/ws/tts/multi"
#: The three native endpoints.
ENDPOINTS: Final = (TTS_ENDPOINT, STREAM_ENDPOINT, MULTI_ENDPOINT)
#: The short name of each endpoint (the transports' ``kind``, the CLI's ``--endpoint``, the
#: server's metrics label) and its path.
ENDPOINT_KINDS: Final[Mapping[str, str]] = MappingProxyType(
    {"stream": STREAM_ENDPOINT, "multi": MULTI_ENDPOINT, "tts": TTS_ENDPOINT}
)

#: Close code of a graceful restart ("service restart"): reconnect and replay.
SERVICE_RESTART: Final = 1012
#: Close code of a draining or full server ("try again later"): reconnect and replay.
TRY_AGAIN_LATER: Final = 1013
#: The close codes after which a client reconnects and replays unfinished work.
RESTART_CODES: Final = frozenset({SERVICE_RESTART, TRY_AGAIN_LATER})

#: The response header every accepted upgrade carries (the output is AI-generated).
AI_GENERATED_HEADER: Final = (b"x-kugelaudio-ai-generated", b"true")
#: The error body of a request without a valid API key (HTTP 401, or an error frame then
#: close 4001). Shared: copy it (``{**UNAUTHORIZED_ERROR, ...}``), never change it.
UNAUTHORIZED_ERROR: Final[dict[str, Any]] = {
    "error": "Unauthorized", "error_code": "UNAUTHORIZED", "code": 401,
}
#: The error body of a request for an unknown path (HTTP 404, or an error frame then close).
NOT_FOUND_ERROR: Final[dict[str, Any]] = {
    "error": "Not found", "error_code": "NOT_FOUND", "code": 404,
}
