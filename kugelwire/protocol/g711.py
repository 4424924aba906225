"""G.711 µ-law and A-law codecs (pure Python, table driven) for ``mulaw_8000`` / ``alaw_8000``."""

from __future__ import annotations

from ._g711 import *  # noqa: F403
from ._g711 import __all__ as __all__
