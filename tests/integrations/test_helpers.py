"""The framework-free helpers the integrations share (no framework needed)."""

from __future__ import annotations

import pytest

from kugelwire.integrations import (
    ServiceOptions,
    audio_format,
    closest_sample_rate,
    language_code,
    voice_id,
)
from kugelwire.protocol import SAMPLE_RATES


def test_sample_rates() -> None:
    for rate in SAMPLE_RATES:
        assert closest_sample_rate(rate) == rate
    assert closest_sample_rate(48000) == 44100  # above every offered rate: the largest
    assert closest_sample_rate(32000) == 44100  # else the next one up, never a lower one
    assert closest_sample_rate(11025) == 16000


def test_audio_formats() -> None:
    assert audio_format("pcm", 16000) == ({"sample_rate": 16000}, 16000)
    assert audio_format("mulaw", 24000) == ({"output_format": "ulaw_8000", "sample_rate": 8000},
                                            8000)
    assert audio_format("alaw", 8000)[0]["output_format"] == "alaw_8000"
    with pytest.raises(ValueError, match="encoding"):
        audio_format("opus", 48000)


def test_language_codes() -> None:
    class Language:  # what framework enums look like
        value = "de-DE"

    assert language_code("en") == "en"
    assert language_code("en-US") == "en"
    assert language_code("pt_BR") == "pt"
    assert language_code(Language()) == "de"
    assert language_code("yue") == "yue"
    assert language_code("xx-YY") is None
    assert language_code(None) is None and language_code("") is None


def test_voice_ids() -> None:
    assert voice_id(1071) == 1071
    assert voice_id("1071") == 1071  # frameworks keep voices as strings
    assert voice_id("narrator-en") == "narrator-en"


def test_service_options_build_the_connect_arguments() -> None:
    options = ServiceOptions("7", keepalive_interval=3.0,
                             connect_options={"close_timeout": 5.0, "max_queue": 4})
    assert options.voice_id == 7  # numeric ids travel as integers
    kwargs, wire = options.connect_kwargs(32000, {"speed": 1.1, "language": None})
    assert wire == 44100
    assert kwargs == {
        "close_timeout": 5.0,  # connect_options win
        "keepalive_interval": 3.0,
        "speed": 1.1,  # None: left out, the server's default applies
        "sample_rate": 44100,
        "word_timestamps": True,
        "max_queue": 4,
    }
    telephony = ServiceOptions(1, encoding="mulaw", word_timestamps=False)
    kwargs, wire = telephony.connect_kwargs(16000, {})
    assert wire == 8000 and kwargs["output_format"] == "ulaw_8000"
    assert kwargs["word_timestamps"] is False and kwargs["close_timeout"] == 2.0
    with pytest.raises(ValueError, match="encoding"):
        ServiceOptions(1, encoding="opus")
