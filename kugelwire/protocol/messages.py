"""The wire's frames as typed values: parse client and server JSON, build it back.

``parse_client_message`` / ``parse_server_message`` validate one JSON text frame into a
``ClientMessage`` or one of the server frame types (raising ``RemoteProtocolError`` for bad
input); ``dumps`` is the compact, ASCII-safe JSON encoder every layer uses.
"""

from __future__ import annotations

from ._messages import *  # noqa: F403
from ._messages import __all__ as __all__
