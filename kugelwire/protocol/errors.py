"""The exceptions of the protocol core.

``LocalProtocolError``: the caller asked for something the protocol forbids, or passed a bad
argument (it is also a ``ValueError``); ``MarkupError`` (bad ``<prosody>`` markup) is one.
``RemoteProtocolError``: the peer sent something invalid. Both are ``ProtocolError`` and carry
``error_code`` and the HTTP-like ``status`` of the error frame they stand for.
"""

from __future__ import annotations

from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._markup import MarkupError

__all__ = ["LocalProtocolError", "MarkupError", "ProtocolError", "RemoteProtocolError"]
