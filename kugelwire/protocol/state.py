"""The sessions' state machines as data: states, inputs and their transition tables."""

from __future__ import annotations

from ._state import *  # noqa: F403
from ._state import __all__ as __all__
