"""Voice-agent framework services built on kugelwire's client.

* :mod:`kugelwire.integrations.pipecat`: ``KugelwireTTSService``, a Pipecat websocket TTS service
  (extra ``kugelwire[pipecat]``).
* :mod:`kugelwire.integrations.livekit`: ``TTS``, a LiveKit Agents TTS plugin (extra
  ``kugelwire[livekit]``).

Both speak ``/ws/tts/multi`` through :func:`kugelwire.transports.asyncio.connect_multi`: one
context per utterance, text streamed unflushed and flushed once, barge-in by closing the context
at once, word timestamps converted to time since the start of the utterance's audio. Importing
either module without its framework installed raises an ``ImportError`` naming the extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_URL",
    "ServiceOptions",
    "audio_format",
    "closest_sample_rate",
    "language_code",
    "missing_framework",
    "voice_id",
]

#: The hosted service's base URL (``ws://127.0.0.1:PORT`` for ``kugelwire serve``).
DEFAULT_URL = "wss://api.kugelaudio.com"


def closest_sample_rate(rate: int) -> int:
    """The server sample rate to request for audio wanted at ``rate`` Hz (the rate itself when
    the server offers it, else the smallest offered rate above it, else the largest)."""
    from ..protocol.config import SAMPLE_RATES

    if rate in SAMPLE_RATES:
        return rate
    above = sorted(r for r in SAMPLE_RATES if r > rate)
    return above[0] if above else max(SAMPLE_RATES)


def audio_format(encoding: str, sample_rate: int) -> tuple[dict[str, Any], int]:
    """Connection config for ``encoding`` (``"pcm"``, ``"mulaw"`` or ``"alaw"``; G.711 is 8 kHz
    on the wire) at ``sample_rate``, and the rate the server will send."""
    if encoding == "pcm":
        wire = closest_sample_rate(sample_rate)
        return {"sample_rate": wire}, wire
    if encoding in ("mulaw", "alaw"):
        token = "ulaw_8000" if encoding == "mulaw" else "alaw_8000"
        return {"output_format": token, "sample_rate": 8000}, 8000
    raise ValueError(f"encoding must be 'pcm', 'mulaw' or 'alaw', not {encoding!r}")


def language_code(language: object) -> str | None:
    """An ISO 639-1 code the service accepts for a framework language value (``"en-US"``,
    ``Language.EN_US``, ``"de"``...), or None when it has none."""
    from ..protocol.config import LANGUAGES

    value = getattr(language, "value", language)
    if not isinstance(value, str) or not value:
        return None
    code = value.strip().lower()
    if code in LANGUAGES:
        return code
    base = code.replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else None


def missing_framework(extra: str, framework: str) -> ImportError:
    """The error of importing ``kugelwire.integrations.<extra>`` without its framework."""
    return ImportError(
        f"kugelwire.integrations.{extra} needs {framework}: pip install 'kugelwire[{extra}]'"
    )


def voice_id(value: object) -> int | str:
    """A voice id as the server expects it: numeric ids (frameworks often keep voices as
    strings) travel as integers, other ids as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    return int(text) if text.isdigit() else text


@dataclass
class ServiceOptions:
    """What every framework service keeps of its constructor's connection keywords (``voice_id``,
    ``encoding``, ``word_timestamps``, ``keepalive_interval``, ``connect_options``; the
    generation settings stay with each framework's own settings objects), and the
    :func:`~kugelwire.transports.asyncio.connect_multi` arguments built from them.

    Raises ``ValueError`` for an unknown ``encoding``.
    """

    voice_id: int | str
    encoding: str = "pcm"
    word_timestamps: bool = True
    keepalive_interval: float = 10.0
    connect_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.voice_id = voice_id(self.voice_id)
        self.connect_options = dict(self.connect_options)
        audio_format(self.encoding, 24000)  # validates the encoding now

    def connect_kwargs(
        self, sample_rate: int, settings: Mapping[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """The keyword arguments of ``connect_multi`` for audio wanted at ``sample_rate`` with
        the generation ``settings`` (a None value is left out, so the server's default
        applies), and the rate the server will send. ``connect_options`` win over the rest."""
        fmt, wire = audio_format(self.encoding, sample_rate)
        config = {k: v for k, v in settings.items() if v is not None}
        config.update(fmt, word_timestamps=self.word_timestamps)
        base = {"close_timeout": 2.0, "keepalive_interval": self.keepalive_interval}
        return {**base, **config, **self.connect_options}, wire
