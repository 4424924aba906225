"""Speech engines for the server runner: the :class:`Engine` interface, :class:`ToneEngine`, and
:class:`EspeakEngine` (the embedded voice; needs ``pip install 'kugelwire[voice]'``, imported
lazily so this package works without that extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import SAMPLE_RATES, CancelToken, Engine, SynthesisItem, Voice, VoiceCatalogue
from .tone import TONE_VOICES, ToneEngine, ToneRun

if TYPE_CHECKING:
    from .espeak import EspeakEngine as EspeakEngine

__all__ = [
    "SAMPLE_RATES",
    "TONE_VOICES",
    "CancelToken",
    "Engine",
    "SynthesisItem",
    "ToneEngine",
    "ToneRun",
    "Voice",
    "VoiceCatalogue",
]


def __getattr__(name: str) -> Any:
    # ``from kugelwire.synth import EspeakEngine``: the ImportError raised by .espeak names the
    # extra to install when espeakng-loader or soxr is missing.
    if name == "EspeakEngine":
        from .espeak import EspeakEngine as EspeakEngine

        return EspeakEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
