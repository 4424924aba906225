"""The pure, sans-IO KugelAudio protocol core: no sockets, no event loops, no clocks.

Time is always an argument (``now``, monotonic seconds). Sessions take JSON text in and hand back
events and an outbox of JSON text; connections add the WebSocket layer (wsproto) so a transport
only moves bytes. Each session reports when it next needs waking (``next_deadline()``) and is
woken with ``handle_timeout(now)``.

This namespace holds what most code needs (the sessions, the connections, the configuration,
the errors, the endpoints); the rest lives in documented submodules:

=================================  ==============================================================
:mod:`kugelwire.protocol.sessions`  the six sessions, ``ServerLimits``, the engine hand-off
:mod:`kugelwire.protocol.events`    the client events (``AudioChunk``, ``TurnFinal``, ...)
:mod:`kugelwire.protocol.ws`        connections, their events, the wire's constants
:mod:`kugelwire.protocol.messages`  frames: parse and build the JSON
:mod:`kugelwire.protocol.config`    ``Config``, accepted values, the voice catalogue
:mod:`kugelwire.protocol.errors`    ``ProtocolError`` and its kinds
:mod:`kugelwire.protocol.state`     the state machines' tables
:mod:`kugelwire.protocol.text`      the chunker and the markup scanner
:mod:`kugelwire.protocol.g711`      µ-law / A-law codecs
=================================  ==============================================================

``fast_paths(False)`` (or ``KUGELWIRE_FAST_PATHS=0`` in the environment at import) turns off
the core's fast paths: every message then goes through wsproto, h11, ``json.loads`` and the
dataclass constructors (the same results, more slowly).

Every name of those submodules is also reachable here for compatibility (``Warning``, the
deprecated old name of ``ServerWarning``, with a ``DeprecationWarning``).
"""

from __future__ import annotations

from typing import Any

from . import config, errors, events, g711, messages, sessions, state, text, ws
from ._fast import fast_paths
from .config import Config, SettingsUpdate, VoiceSettings
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import ErrorCode
from .sessions import (
    MultiClientSession,
    MultiServerSession,
    ServerLimits,
    StreamClientSession,
    StreamServerSession,
    TTSClientSession,
    TTSServerSession,
)
from .ws import (
    ENDPOINTS,
    MULTI_ENDPOINT,
    STREAM_ENDPOINT,
    TTS_ENDPOINT,
    ClientConnection,
    ServerConnection,
    build_url,
)

__all__ = [
    "ENDPOINTS",
    "MULTI_ENDPOINT",
    "STREAM_ENDPOINT",
    "TTS_ENDPOINT",
    "ClientConnection",
    "Config",
    "ErrorCode",
    "LocalProtocolError",
    "MultiClientSession",
    "MultiServerSession",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerConnection",
    "ServerLimits",
    "SettingsUpdate",
    "StreamClientSession",
    "StreamServerSession",
    "TTSClientSession",
    "TTSServerSession",
    "VoiceSettings",
    "build_url",
    "fast_paths",
]

#: The submodules searched (in this order) for a name that is not in ``__all__``.
_SUBMODULES = (sessions, events, ws, messages, config, errors, state, text, g711)


def __getattr__(name: str) -> Any:
    """The names that moved to a submodule stay importable from here (old code keeps working)."""
    for module in _SUBMODULES:
        if name in module.__all__:
            return getattr(module, name)
    found = events._deprecated(name, 2)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return found
