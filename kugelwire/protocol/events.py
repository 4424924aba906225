"""The events a client session hands to the application: frozen, slotted, comparable.

``ClientEvent`` is their union. Each turn (``/ws/tts/stream``), request (``/ws/tts``) or
context turn (``/ws/tts/multi``) ends with exactly one terminal event (``TurnFinal`` /
``RequestFinal``, ``Interrupted``, ``TurnAborted`` or a turn-ending ``ServerError``).
``Warning`` is the deprecated old name of :class:`ServerWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._events import *  # noqa: F403
from ._events import ServerWarning
from ._events import __all__ as __all__


def _deprecated(name: str, stacklevel: int) -> Any:
    """The object a deprecated name stands for, with a ``DeprecationWarning``."""
    if name != "Warning":
        return None
    warnings.warn(
        "Warning (the event) is deprecated; use kugelwire.protocol.events.ServerWarning",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
    return ServerWarning


def __getattr__(name: str) -> Any:
    found = _deprecated(name, 2)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return found
