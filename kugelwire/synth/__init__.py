"""Speech engines for the server runner: the :class:`Engine` interface and :class:`ToneEngine`."""

from __future__ import annotations

from ._base import SAMPLE_RATES, CancelToken, Engine, SynthesisItem
from .tone import ToneEngine, ToneRun

__all__ = ["SAMPLE_RATES", "CancelToken", "Engine", "SynthesisItem", "ToneEngine", "ToneRun"]
