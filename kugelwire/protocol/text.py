"""Text handling of the server role: the sentence chunker and the inline markup.

``Chunker`` cuts streamed text into the chunks an engine speaks (sentences, ``<spell>``
buffering and auto-close, timers); ``scan`` reads ``<spell>``, ``<break>`` and ``<prosody>``
markup (raising ``MarkupError`` for malformed ``<prosody>``).
"""

from __future__ import annotations

from ._chunker import *  # noqa: F403
from ._chunker import __all__ as _chunker_all
from ._markup import *  # noqa: F403
from ._markup import __all__ as _markup_all

__all__ = [*_chunker_all, *_markup_all]
