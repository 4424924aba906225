"""Generation parameters as immutable, validated values (protocol.md#generation-parameters,
protocol.md#stream-messages, protocol.md#update-settings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ProtocolError, RemoteProtocolError
from ._validate import ErrT, bad, check_range, opt_bool, opt_float, opt_int, opt_str

__all__ = [
    "CONFIG_FIELDS",
    "FORBIDDEN_SETTINGS_KEYS",
    "LANGUAGES",
    "OUTPUT_FORMATS",
    "SAMPLE_RATES",
    "SETTINGS_KEYS",
    "Config",
    "SettingsUpdate",
    "VoiceSettings",
    "resolve_audio_format",
]

SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 44100})
#: output_format token -> (enc, sample rate)  (protocol.md#audio-formats)
OUTPUT_FORMATS: Mapping[str, tuple[str, int]] = {
    "pcm_8000": ("pcm_s16le", 8000),
    "pcm_16000": ("pcm_s16le", 16000),
    "pcm_22050": ("pcm_s16le", 22050),
    "pcm_24000": ("pcm_s16le", 24000),
    "ulaw_8000": ("mulaw", 8000),
    "alaw_8000": ("alaw", 8000),
}
LANGUAGES = frozenset(
    [
        "de",
        "en",
        "fr",
        "es",
        "it",
        "pt",
        "nl",
        "pl",
        "sv",
        "da",
        "no",
        "fi",
        "cs",
        "hu",
        "ro",
        "el",
        "uk",
        "bg",
        "tr",
        "vi",
        "ar",
        "hi",
        "zh",
        "ja",
        "ko",
        "sk",
        "sl",
        "hr",
        "sr",
        "ru",
        "he",
        "fa",
        "ur",
        "bn",
        "ta",
        "yue",
        "th",
        "id",
        "ms",
    ]
)
SETTINGS_KEYS = ("cfg_scale", "temperature", "max_new_tokens", "language", "normalize", "speed")
FORBIDDEN_SETTINGS_KEYS = frozenset(
    {"voice_id", "model_id", "sample_rate", "output_format", "project_id", "dictionary_ids"}
)
CFG_MIN, CFG_MAX = 1.2, 2.5


def _clamp_cfg(value: float | None) -> float | None:
    return None if value is None else min(CFG_MAX, max(CFG_MIN, value))


def _opt_voice_id(
    obj: Mapping[str, Any], key: str, err: ErrT, prefix: str = ""
) -> int | str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad(err, prefix + key, "an integer or a string", value)
    if isinstance(value, str) and not value:
        raise err(f"{prefix}{key}: must not be empty", field=prefix + key)
    return value


def _opt_language(obj: Mapping[str, Any], err: ErrT, prefix: str = "") -> str | None:
    value = opt_str(obj, "language", err, prefix)
    _check_supported(value, LANGUAGES, prefix + "language", "language", "ISO 639-1, e.g. 'en'", err)
    return value


def _check_supported(
    value: object, supported: Iterable[object], name: str, what: str, hint: str, err: ErrT
) -> None:
    """``err`` naming the field ``name`` when ``value`` is set but not one of ``supported``."""
    if value is not None and value not in supported:
        raise err(f"{name}: unsupported {what} {value!r} ({hint})", field=name)


def _opt_int_list(
    obj: Mapping[str, Any],
    key: str,
    err: ErrT,
    *,
    lo: int,
    max_len: int | None = None,
    non_empty: bool = False,
) -> tuple[int, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad(err, key, "an array of integers", value)
    if non_empty and not value:
        raise err(f"{key}: must not be empty", field=key)
    if max_len is not None and len(value) > max_len:
        raise err(f"{key}: at most {max_len} entries", field=key)
    out: list[int] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise bad(err, f"{key}[{i}]", "an integer", item)
        check_range(item, f"{key}[{i}]", err, lo, None)
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Config:
    """Generation and stream parameters; ``None`` means "not set" (server default applies).

    One class serves every endpoint: the top-level config fields of a ``/ws/tts`` request, the
    sticky ``/ws/tts/stream`` config and the session-wide fields of a ``/ws/tts/multi`` frame.
    ``cfg_scale`` is clamped into [1.2, 2.5] (rulings.md#ruling-18); every other field out of
    range is an error.
    """

    voice_id: int | str | None = None
    model_id: str | None = None
    cfg_scale: float | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    sample_rate: int | None = None
    output_format: str | None = None
    normalize: bool | None = None
    language: str | None = None
    speed: float | None = None
    word_timestamps: bool | None = None
    speaker_prefix: bool | None = None
    project_id: int | None = None
    dictionary_ids: tuple[int, ...] | None = None
    # stream-only
    flush_timeout_ms: int | None = None
    max_buffer_length: int | None = None
    chunk_length_schedule: tuple[int, ...] | None = None
    auto_mode: bool | None = None
    # multi-only
    inactivity_timeout: float | None = None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], err: ErrT = RemoteProtocolError) -> Config:
        """Validate the config fields present in ``obj`` (other keys are ignored)."""
        sample_rate = opt_int(obj, "sample_rate", err)
        rates = "one of " + ", ".join(map(str, sorted(SAMPLE_RATES)))
        _check_supported(sample_rate, SAMPLE_RATES, "sample_rate", "rate", rates, err)
        output_format = opt_str(obj, "output_format", err)
        formats = "one of " + ", ".join(OUTPUT_FORMATS)
        _check_supported(output_format, OUTPUT_FORMATS, "output_format", "format", formats, err)
        model_id = opt_str(obj, "model_id", err)
        if model_id is None:
            model_id = opt_str(obj, "model", err)  # REST legacy alias
        if model_id is not None and not model_id:
            raise err("model_id: must not be empty", field="model_id")
        return cls(
            voice_id=_opt_voice_id(obj, "voice_id", err),
            model_id=model_id,
            cfg_scale=_clamp_cfg(opt_float(obj, "cfg_scale", err)),
            temperature=opt_float(obj, "temperature", err, lo=0.0, hi=1.0),
            max_new_tokens=opt_int(obj, "max_new_tokens", err, lo=1, hi=2048),
            sample_rate=sample_rate,
            output_format=output_format,
            normalize=opt_bool(obj, "normalize", err),
            language=_opt_language(obj, err),
            speed=opt_float(obj, "speed", err, lo=0.8, hi=1.2),
            word_timestamps=opt_bool(obj, "word_timestamps", err),
            speaker_prefix=opt_bool(obj, "speaker_prefix", err),
            project_id=opt_int(obj, "project_id", err),
            dictionary_ids=_opt_int_list(obj, "dictionary_ids", err, lo=0, max_len=50),
            flush_timeout_ms=opt_int(obj, "flush_timeout_ms", err, lo=0, hi=600_000),
            max_buffer_length=opt_int(obj, "max_buffer_length", err, lo=1, hi=10_000_000),
            chunk_length_schedule=_opt_int_list(
                obj, "chunk_length_schedule", err, lo=1, max_len=64, non_empty=True
            ),
            auto_mode=opt_bool(obj, "auto_mode", err),
            inactivity_timeout=opt_float(obj, "inactivity_timeout", err, lo=0.001, hi=180.0),
        )

    @classmethod
    def build(cls, **fields: Any) -> Config:
        """Build from keyword arguments, validated like the wire (raises LocalProtocolError)."""
        from ._errors import LocalProtocolError

        unknown = set(fields) - set(CONFIG_FIELDS) - {"model"}
        if unknown:
            raise LocalProtocolError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        wire = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
        return cls.from_dict(wire, LocalProtocolError)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values."""
        out: dict[str, Any] = {}
        for name in CONFIG_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def merged(self, other: Config) -> Config:
        """``self`` overridden by every field ``other`` sets."""
        changes = {n: getattr(other, n) for n in CONFIG_FIELDS if getattr(other, n) is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def is_empty(self) -> bool:
        return all(getattr(self, n) is None for n in CONFIG_FIELDS)


CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
EMPTY_CONFIG = Config()


def resolve_audio_format(config: Config, err: ErrT = RemoteProtocolError) -> tuple[str, int]:
    """(enc, sample rate) a turn will use; ``output_format`` wins over ``sample_rate``.

    An explicit non-default ``sample_rate`` that contradicts ``output_format`` is an error
    (24000 counts as the SDKs' serialised default, protocol.md#audio-formats).
    """
    if config.output_format is not None:
        enc, rate = OUTPUT_FORMATS[config.output_format]
        if config.sample_rate not in (None, 24000, rate):
            raise err(
                f"output_format {config.output_format!r} contradicts sample_rate "
                f"{config.sample_rate}",
                field="output_format",
            )
        return enc, rate
    return "pcm_s16le", config.sample_rate or 24000


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """``voice_settings`` of a multi-context frame: the context's voice and overrides."""

    voice_id: int | str | None = None
    cfg_scale: float | None = None
    max_new_tokens: int | None = None

    @classmethod
    def from_dict(cls, obj: object, err: ErrT = RemoteProtocolError) -> VoiceSettings:
        if not isinstance(obj, dict):
            raise bad(err, "voice_settings", "an object", obj)
        # ElevenLabs-style keys (stability, speed, ...) are ignored (rulings.md#ruling-24).
        p = "voice_settings."
        return cls(
            voice_id=_opt_voice_id(obj, "voice_id", err, p),
            cfg_scale=_clamp_cfg(opt_float(obj, "cfg_scale", err, prefix=p)),
            max_new_tokens=opt_int(obj, "max_new_tokens", err, lo=1, hi=2048, prefix=p),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.voice_id is not None:
            out["voice_id"] = self.voice_id
        if self.cfg_scale is not None:
            out["cfg_scale"] = self.cfg_scale
        if self.max_new_tokens is not None:
            out["max_new_tokens"] = self.max_new_tokens
        return out


@dataclass(frozen=True, slots=True)
class SettingsUpdate:
    """The body of ``update_settings``: only the six updatable keys
    (protocol.md#update-settings)."""

    cfg_scale: float | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    language: str | None = None
    normalize: bool | None = None
    speed: float | None = None

    @classmethod
    def from_dict(cls, obj: object, err: ErrT = RemoteProtocolError) -> SettingsUpdate:
        if not isinstance(obj, dict):
            raise bad(err, "update_settings", "an object", obj)
        extra = sorted(set(obj) - set(SETTINGS_KEYS))
        if extra:
            which = "not updatable" if FORBIDDEN_SETTINGS_KEYS.intersection(extra) else "unknown"
            raise err(
                f"Invalid settings update: {', '.join(extra)}: {which} "
                f"(only {', '.join(SETTINGS_KEYS)} can be updated)",
                field="update_settings." + extra[0],
            )
        p = "update_settings."
        try:
            return cls(
                cfg_scale=_clamp_cfg(opt_float(obj, "cfg_scale", err, prefix=p)),
                temperature=opt_float(obj, "temperature", err, lo=0.0, hi=1.0, prefix=p),
                max_new_tokens=opt_int(obj, "max_new_tokens", err, lo=1, hi=2048, prefix=p),
                language=_opt_language(obj, err, p),
                normalize=opt_bool(obj, "normalize", err, prefix=p),
                speed=opt_float(obj, "speed", err, lo=0.8, hi=1.2, prefix=p),
            )
        except ProtocolError as exc:
            raise err(f"Invalid settings update: {exc.message}", field=exc.field) from None

    @classmethod
    def build(cls, **fields: Any) -> SettingsUpdate:
        from ._errors import LocalProtocolError

        if not fields:
            raise LocalProtocolError(
                "update_settings needs at least one of " + ", ".join(SETTINGS_KEYS)
            )
        return cls.from_dict({k: v for k, v in fields.items()}, LocalProtocolError)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SETTINGS_KEYS if getattr(self, k) is not None}

    def as_config(self) -> Config:
        return Config(**{k: getattr(self, k) for k in SETTINGS_KEYS})
