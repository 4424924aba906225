"""The message-level sessions of both roles: JSON text in, events and JSON text out.

Client: ``StreamClientSession`` (``/ws/tts/stream``), ``MultiClientSession``
(``/ws/tts/multi``), ``TTSClientSession`` (``/ws/tts``). Server: their counterparts
``StreamServerSession``, ``MultiServerSession`` and ``TTSServerSession``, which hand
``SynthesisRequested`` / ``SynthesisCancelled`` to an engine. ``ClientSession`` and
``ServerSession`` are the bases each role's three share (for annotations).
"""

from __future__ import annotations

from ._client import *  # noqa: F403
from ._client import __all__ as _client_all
from ._client import _ClientSession as ClientSession
from ._server import *  # noqa: F403
from ._server import __all__ as _server_all
from ._server import _ServerSession as ServerSession

__all__ = [*_client_all, *_server_all, "ClientSession", "ServerSession"]
