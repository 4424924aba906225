"""The wire schema: every JSON message of ``/ws/tts``, ``/ws/tts/stream`` and ``/ws/tts/multi``.

Messages carry no ``type`` field; the kind is the key that is present (protocol.md#framing).
Parsing is strict about types and ranges (a :class:`RemoteProtocolError` naming the field, never a
``KeyError`` or ``JSONDecodeError``) and tolerant of unknown fields. Audio stays a base64 string
until first accessed.
"""

from __future__ import annotations

import binascii
import importlib
import json
import sys
from base64 import b64decode, b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _fast
from ._config import EMPTY_CONFIG, SETTINGS_KEYS, Config, SettingsUpdate, VoiceSettings
from ._errors import RemoteProtocolError
from ._validate import ErrT, _type_name, bad, opt_bool, opt_float, opt_int, opt_str, req_str

__all__ = [
    "ENCODINGS",
    "SAMPLE_WIDTH",
    "AudioFrame",
    "ChunkCompleteFrame",
    "ClientMessage",
    "ContextClosedFrame",
    "ContextCreatedFrame",
    "ContextTimeoutFrame",
    "ErrorFrame",
    "FinalFrame",
    "GenerationStartedFrame",
    "InterruptedFrame",
    "IsFinalFrame",
    "ServerMessage",
    "SessionClosedFrame",
    "SessionStartedFrame",
    "SettingsUpdatedFrame",
    "UnknownFrame",
    "Usage",
    "WarningFrame",
    "WordTimestamp",
    "WordTimestampsFrame",
    "dumps",
    "loads_object",
    "parse_client_message",
    "parse_server_message",
]

#: Bytes per audio sample of each ``enc``: PCM16 takes two, G.711 (mu-law, A-law) one.
SAMPLE_WIDTH: Mapping[str, int] = {"pcm_s16le": 2, "mulaw": 1, "alaw": 1}
#: The audio encodings (``enc``) of the wire.
ENCODINGS = frozenset(SAMPLE_WIDTH)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact JSON (ASCII-safe, so lone surrogates from a peer can never break UTF-8 framing)."""
    return _dumps(obj)


def loads_object(text: str | bytes, err: ErrT = RemoteProtocolError) -> dict[str, Any]:
    """``json.loads`` that only accepts a JSON object and raises ``err`` on anything else."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
        raise err(f"Invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise err(f"Invalid message: expected a JSON object, got {_type_name(obj)}")
    return obj


def _opt_context_id(obj: Mapping[str, Any], err: ErrT) -> str | None:
    value = obj.get("context_id")
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(err, "context_id", "a string", value)
    if not value or len(value) > 256:
        raise err("context_id: must be 1-256 characters", field="context_id")
    return value


def _truthy_flag(obj: Mapping[str, Any], key: str, err: ErrT) -> bool:
    """Boolean command keys (``flush``, ``cancel``...): absent/false/null -> False."""
    value = obj.get(key)
    if value is None or value is False:
        return False
    if value is True:
        return True
    raise bad(err, key, "a boolean", value)


# ---------------------------------------------------------------------------------------------
# Client -> server


class _JsonMessage:
    """A message of the wire as one JSON object: :meth:`to_dict`, and :meth:`to_json` (its
    compact text, as sent)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class ClientMessage(_JsonMessage):
    """One client frame. A frame may combine config fields, ``text`` and ``flush``
    (protocol.md#framing)."""

    text: str | None = None
    flush: bool = False
    context_id: str | None = None
    config: Config = EMPTY_CONFIG
    voice_settings: VoiceSettings | None = None
    update_settings: SettingsUpdate | None = None
    cancel: bool = False
    close: bool = False  # ``close`` or its alias ``end_session``
    close_socket: bool = False
    close_context: bool = False
    immediate: bool = False
    keep_alive: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.update_settings is not None:
            out["update_settings"] = self.update_settings.to_dict()
        if self.text is not None:
            out["text"] = self.text
        if self.context_id is not None:
            out["context_id"] = self.context_id
        out.update(self.config.to_dict())
        if self.voice_settings is not None:
            out["voice_settings"] = self.voice_settings.to_dict()
        for key in (
            "flush",
            "cancel",
            "close",
            "close_socket",
            "close_context",
            "immediate",
            "keep_alive",
        ):
            if getattr(self, key):
                out[key] = True
        return out


_TEXT_KEYS = frozenset({"text", "flush"})


def parse_client_message(text: str | bytes, err: ErrT = RemoteProtocolError) -> ClientMessage:
    """Parse and validate one client frame (server role)."""
    obj = loads_object(text, err)
    if obj.keys() <= _TEXT_KEYS and type(obj.get("text")) is str and _fast.ENABLED:
        # The hot path (an LLM token): no config, context or command fields to look at.
        return ClientMessage(text=obj["text"], flush=_truthy_flag(obj, "flush", err))
    context_id = _opt_context_id(obj, err)
    try:
        upd = obj.get("update_settings")
        update = None if upd is None else SettingsUpdate.from_dict(upd, err)
        vs = obj.get("voice_settings")
        text_value = obj.get("text")
        if text_value is not None and not isinstance(text_value, str):
            raise bad(err, "text", "a string", text_value)
        return ClientMessage(
            text=text_value,
            flush=_truthy_flag(obj, "flush", err),
            context_id=context_id,
            config=Config.from_dict(obj, err),
            voice_settings=None if vs is None else VoiceSettings.from_dict(vs, err),
            update_settings=update,
            cancel=_truthy_flag(obj, "cancel", err),
            close=_truthy_flag(obj, "close", err) or _truthy_flag(obj, "end_session", err),
            close_socket=_truthy_flag(obj, "close_socket", err),
            close_context=_truthy_flag(obj, "close_context", err),
            immediate=_truthy_flag(obj, "immediate", err),
            keep_alive=_truthy_flag(obj, "keep_alive", err),
        )
    except RemoteProtocolError as exc:
        exc.context_id = context_id
        raise


# ---------------------------------------------------------------------------------------------
# Server -> client


@dataclass(frozen=True, slots=True)
class Usage:
    """Billing object (protocol.md#usage). ``cost_cents`` is ``None`` when undeterminable."""

    audio_seconds: float
    characters: int | None = None
    cost_cents: float | None = None
    currency: str | None = None
    cost_unavailable: bool = False
    model_id: str | None = None

    @classmethod
    def from_dict(cls, obj: object, err: ErrT = RemoteProtocolError) -> Usage:
        if not isinstance(obj, dict):
            raise bad(err, "usage", "an object", obj)
        p = "usage."
        return cls(
            audio_seconds=opt_float(obj, "audio_seconds", err, lo=0, prefix=p) or 0.0,
            characters=opt_int(obj, "characters", err, lo=0, prefix=p),
            cost_cents=opt_float(obj, "cost_cents", err, prefix=p),
            currency=opt_str(obj, "currency", err, p),
            cost_unavailable=bool(opt_bool(obj, "cost_unavailable", err, p)),
            model_id=opt_str(obj, "model_id", err, p),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"audio_seconds": self.audio_seconds}
        if self.characters is not None:
            out["characters"] = self.characters
        out["cost_cents"] = self.cost_cents
        if self.cost_cents is not None:
            out["currency"] = self.currency or "eur"
        else:
            out["cost_unavailable"] = True
        if self.model_id is not None:
            out["model_id"] = self.model_id
        return out


#: (encode, strict decode, decode of text already checked as strict base64, decode of text
#: whose length is the exact base64 length of the bytes it must give, checked by the caller:
#: strict, and only excess padding, which that length rules out, is not looked for)
Codec: TypeAlias = tuple[
    Callable[[bytes], bytes], Callable[[str], bytes], Callable[[str], bytes],
    Callable[[str], bytes],
]


def _stdlib_base64_codec() -> Codec:
    """:func:`_base64_codec` without the ``fast`` extra: the standard library's."""
    a2b = binascii.a2b_base64

    if sys.version_info >= (3, 11):

        def decode_exact(text: str) -> bytes:
            return a2b(text, strict_mode=True)

    else:

        def decode_exact(text: str) -> bytes:
            return b64decode(text, validate=True)

    def decode_std(text: str) -> bytes:
        # The stdlib's strict mode still takes padding past a complete quad ("AAAA=",
        # "AAAA===="); pybase64 and RFC 4648 do not.
        if text.endswith("=") and (len(text) % 4 or text.endswith("===")):
            raise binascii.Error("Excess padding")
        return decode_exact(text)

    return b64encode, decode_std, a2b, decode_exact


def _base64_codec() -> Codec:
    """The codec (see :data:`Codec`): pybase64's SIMD codec when installed (the optional
    ``fast`` extra; same results and the same errors), else the standard library's."""
    try:
        fast = importlib.import_module("pybase64")
    except ImportError:
        return _stdlib_base64_codec()
    encode, decode = fast.b64encode, fast.b64decode

    def decode_strict(text: str) -> bytes:
        return decode(text, validate=True)  # type: ignore[no-any-return]

    return encode, decode_strict, decode, decode_strict


_b64encode, _b64decode, _b64decode_checked, _b64decode_exact = _base64_codec()
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _check_by_decoding(text: str) -> bool:
    """Whether :func:`_b64decode` accepts ``text`` (used with pybase64, whose SIMD decoder is
    faster than any scan; the bytes are not kept)."""
    try:
        _b64decode(text)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_alphabet(text: str) -> bool:
    """Whether ``text`` is strict base64 (what the stdlib decoder accepts), by a C-speed scan
    of its alphabet: no decoding, no bytes kept."""
    if len(text) & 3 or not text.isascii():
        return False
    rest = text.encode("ascii").translate(None, _B64_ALPHABET)
    return not rest or (rest in (b"=", b"==") and text.endswith(rest.decode("ascii")))


def _base64_check() -> Callable[[str], bool]:
    try:
        importlib.import_module("pybase64")
    except ImportError:
        return _check_alphabet
    return _check_by_decoding


_b64check = _base64_check()


def _b64_size(text: str) -> int | None:
    """The decoded length of the base64 ``text``, or None when it is not valid base64."""
    n = len(text)
    if n & 3 or not _b64check(text):
        return None
    return 0 if not n else (n >> 2) * 3 - (text[-2] == "=") - (text[-1] == "=")


def _b64(data: bytes) -> str:
    return _b64encode(data).decode("ascii")


def _samples_in(data: bytes, enc: str) -> int:
    """How many samples ``data`` holds in ``enc`` (see :data:`SAMPLE_WIDTH`; a frame is not
    validated when it is built, and an unknown ``enc`` counts a byte a sample)."""
    return len(data) // SAMPLE_WIDTH.get(enc, 1)


def audio_frame_text(
    data: bytes, enc: str, idx: int, sr: int, chunk_id: int | None, context_id: str | None
) -> str:
    """``AudioFrame.from_bytes(data, enc=enc, idx=idx, ...).to_json()`` without building the
    frame (how a server sends its audio: the text is all it needs)."""
    samples = _samples_in(data, enc)
    if _fast.ENABLED:
        text = _fast.audio_text(_b64(data), enc, idx, sr, samples, chunk_id, context_id)
        if text is not None:
            return text
    return AudioFrame.from_bytes(
        data, enc=enc, idx=idx, sr=sr, chunk_id=chunk_id, context_id=context_id
    ).to_json()


@dataclass(frozen=True, slots=True)
class AudioFrame(_JsonMessage):
    """``{"audio": ..., "enc", "idx", "sr", "samples", "chunk_id"[, "context_id"]}``.

    ``audio`` is kept as the base64 text and :attr:`data` holds its bytes: a parsed frame's
    audio was decoded when it was parsed (the decode is the check that it is strict base64 and
    that ``samples`` matches its length); a frame built from fields decodes on first access
    (and caches). :meth:`pcm16` returns PCM16LE whatever ``enc`` is (G.711 is expanded).
    """

    audio: str
    enc: str = "pcm_s16le"
    idx: int = 0
    sr: int = 24000
    samples: int = 0
    chunk_id: int | None = None
    context_id: str | None = None
    _data: list[bytes] = field(default_factory=list, repr=False, compare=False)
    #: ``idx`` was on the wire (a frame without one gets 0 and is not checked for order).
    _has_idx: bool = field(default=True, repr=False, compare=False)
    #: ``audio`` is strict base64: checked when the frame was parsed, or written by
    #: :meth:`from_bytes`; so :attr:`data` may decode it and :meth:`to_json` write it without
    #: checking again (faster).
    #: Not an ``__init__`` argument: ``dataclasses.replace`` of a frame checks its audio again.
    _checked: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        enc: str = "pcm_s16le",
        idx: int,
        sr: int,
        chunk_id: int | None = None,
        context_id: str | None = None,
    ) -> AudioFrame:
        frame = cls(_b64(data), enc, idx, sr, _samples_in(data, enc), chunk_id, context_id,
                    [data])
        _set_checked(frame, True)  # base64 by construction
        return frame

    @property
    def data(self) -> bytes:
        """The raw audio bytes in :attr:`enc` (decoded when parsed, else on first access)."""
        cache = self._data
        if not cache:
            if self._checked:
                cache.append(_b64decode_checked(self.audio))
                return cache[0]
            try:
                cache.append(_b64decode(self.audio))
            except (binascii.Error, ValueError):
                raise RemoteProtocolError("audio: invalid base64", field="audio") from None
        return cache[0]

    def pcm16(self) -> bytes:
        """The audio as signed 16-bit little-endian PCM."""
        if self.enc == "pcm_s16le":
            return self.data
        from ._g711 import alaw_decode, ulaw_decode

        return ulaw_decode(self.data) if self.enc == "mulaw" else alaw_decode(self.data)

    @property
    def duration_s(self) -> float:
        return self.samples / self.sr if self.sr else 0.0

    def to_json(self) -> str:
        if self._checked and _fast.ENABLED:  # base64 audio: nothing to escape in it
            text = _fast.audio_json(self)
            if text is not None:
                return text
        return dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "audio": self.audio,
            "enc": self.enc,
            "idx": self.idx,
            "sr": self.sr,
            "samples": self.samples,
        }
        if self.chunk_id is not None:
            out["chunk_id"] = self.chunk_id
        if self.context_id is not None:
            out["context_id"] = self.context_id
        return out


#: ``AudioFrame(audio, enc, idx, sr, samples, chunk_id, context_id)`` of a parsed (checked)
#: frame, its slots filled directly (see :mod:`._fast`).
if TYPE_CHECKING:  # the signature the generated function has

    def _audio_frame(
        audio: str,
        enc: str,
        idx: int,
        sr: int,
        samples: int,
        chunk_id: int | None,
        context_id: str | None,
    ) -> AudioFrame: ...

    def _decoded_audio_frame(
        audio: str,
        enc: str,
        idx: int,
        sr: int,
        samples: int,
        chunk_id: int | None,
        context_id: str | None,
        _data: list[bytes],
    ) -> AudioFrame: ...

else:
    _audio_frame = _fast.frozen_constructor(
        AudioFrame,
        ("audio", "enc", "idx", "sr", "samples", "chunk_id", "context_id"),
        fixed={"_data": "[]", "_has_idx": "True", "_checked": "True"},
    )
    #: the same, with the audio decoded already (``_data``: ``[the bytes]``)
    _decoded_audio_frame = _fast.frozen_constructor(
        AudioFrame,
        ("audio", "enc", "idx", "sr", "samples", "chunk_id", "context_id", "_data"),
        fixed={"_has_idx": "True", "_checked": "True"},
    )
_set_checked = getattr(AudioFrame, "_checked").__set__  # noqa: B009 (a slot descriptor)


@dataclass(frozen=True, slots=True)
class WordTimestamp:
    word: str
    start_ms: float
    end_ms: float
    char_start: int
    char_end: int
    score: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "score": self.score,
        }


def _ms(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True, slots=True)
class WordTimestampsFrame(_JsonMessage):
    words: tuple[WordTimestamp, ...]
    chunk_id: int | None = None
    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "word_timestamps": [
                {**w.to_dict(), "start_ms": _ms(w.start_ms), "end_ms": _ms(w.end_ms)}
                for w in self.words
            ]
        }
        if self.chunk_id is not None:
            out["chunk_id"] = self.chunk_id
        if self.context_id is not None:
            out["context_id"] = self.context_id
        return out


def _with_ctx(out: dict[str, Any], context_id: str | None) -> dict[str, Any]:
    if context_id is not None:
        out["context_id"] = context_id
    return out


@dataclass(frozen=True, slots=True)
class GenerationStartedFrame(_JsonMessage):
    chunk_id: int
    text: str = ""
    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ctx(
            {"generation_started": True, "chunk_id": self.chunk_id, "text": self.text},
            self.context_id,
        )


if TYPE_CHECKING:

    def _generation_started_frame(
        chunk_id: int, text: str, context_id: str | None
    ) -> GenerationStartedFrame: ...

else:
    _generation_started_frame = _fast.frozen_constructor(
        GenerationStartedFrame, ("chunk_id", "text", "context_id")
    )


@dataclass(frozen=True, slots=True)
class ChunkCompleteFrame(_JsonMessage):
    chunk_id: int
    audio_seconds: float = 0.0
    gen_ms: float = 0.0
    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ctx(
            {
                "chunk_complete": True,
                "chunk_id": self.chunk_id,
                "audio_seconds": self.audio_seconds,
                "gen_ms": _ms(self.gen_ms),
            },
            self.context_id,
        )


@dataclass(frozen=True, slots=True)
class FinalFrame(_JsonMessage):
    """``final``: end of audio. Stream fields (``total_*``), ``/ws/tts`` stats, or multi."""

    context_id: str | None = None
    total_audio_seconds: float | None = None
    total_text_chunks: int | None = None
    total_audio_chunks: int | None = None
    # /ws/tts request statistics
    chunks: int | None = None
    total_samples: int | None = None
    dur_ms: float | None = None
    gen_ms: float | None = None
    rtf: float | None = None
    debug: Mapping[str, Any] | None = None
    usage: Usage | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"final": True}
        for key in (
            "total_audio_seconds",
            "total_text_chunks",
            "total_audio_chunks",
            "chunks",
            "total_samples",
            "dur_ms",
            "gen_ms",
            "rtf",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.debug is not None:
            out["debug"] = dict(self.debug)
        if self.usage is not None:
            out["usage"] = self.usage.to_dict()
        return _with_ctx(out, self.context_id)


@dataclass(frozen=True, slots=True)
class SessionClosedFrame(_JsonMessage):
    total_audio_seconds: float | None = None
    total_text_chunks: int | None = None
    total_audio_chunks: int | None = None
    usage: Usage | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session_closed": True}
        for key in ("total_audio_seconds", "total_text_chunks", "total_audio_chunks"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.usage is not None:
            out["usage"] = self.usage.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class InterruptedFrame(_JsonMessage):
    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ctx({"interrupted": True}, self.context_id)


@dataclass(frozen=True, slots=True)
class SettingsUpdatedFrame(_JsonMessage):
    """``settings_updated``: the full effective set of the six keys, ``None`` for unset."""

    settings: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings_updated": True,
            "settings": {k: self.settings.get(k) for k in SETTINGS_KEYS},
        }


@dataclass(frozen=True, slots=True)
class ErrorFrame(_JsonMessage):
    error: str
    error_code: str | None = None
    code: int | None = None
    context_id: str | None = None
    request_id: str | None = None
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.error_code is not None:
            out["error_code"] = self.error_code
        if self.code is not None:
            out["code"] = self.code
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return _with_ctx(out, self.context_id)


@dataclass(frozen=True, slots=True)
class WarningFrame(_JsonMessage):
    warning: str
    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ctx({"warning": self.warning}, self.context_id)


@dataclass(frozen=True, slots=True)
class ContextCreatedFrame(_JsonMessage):
    context_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"context_created": True, "context_id": self.context_id}


@dataclass(frozen=True, slots=True)
class ContextClosedFrame(_JsonMessage):
    context_id: str
    usage: Usage | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"context_closed": True, "context_id": self.context_id}
        if self.usage is not None:
            out["usage"] = self.usage.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class ContextTimeoutFrame(_JsonMessage):
    context_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"context_timeout": True, "context_id": self.context_id}


@dataclass(frozen=True, slots=True)
class SessionStartedFrame(_JsonMessage):
    """Legacy multi greeting; tolerated, never sent by our server (rulings.md#ruling-24)."""

    session_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session_started": True}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        return out


@dataclass(frozen=True, slots=True)
class IsFinalFrame(_JsonMessage):
    """Legacy multi ``is_final``; tolerated, never sent by our server."""

    context_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ctx({"is_final": True}, self.context_id)


@dataclass(frozen=True, slots=True)
class UnknownFrame(_JsonMessage):
    """A JSON object with none of the known keys (forward compatibility: ignored, counted)."""

    keys: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {}


ServerMessage: TypeAlias = (
    AudioFrame
    | WordTimestampsFrame
    | GenerationStartedFrame
    | ChunkCompleteFrame
    | FinalFrame
    | SessionClosedFrame
    | InterruptedFrame
    | SettingsUpdatedFrame
    | ErrorFrame
    | WarningFrame
    | ContextCreatedFrame
    | ContextClosedFrame
    | ContextTimeoutFrame
    | SessionStartedFrame
    | IsFinalFrame
    | UnknownFrame
)

_E = RemoteProtocolError
_MAX_INT = 2**53
_MAX_FLOAT = sys.float_info.max


def _uint(obj: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = obj.get(key)
    if type(value) is int and 0 <= value <= _MAX_INT:  # the usual case, checked inline
        return value
    value = opt_int(obj, key, _E, lo=0, hi=_MAX_INT)
    return default if value is None else value


def _nnfloat(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if type(value) is float and 0.0 <= value <= _MAX_FLOAT:  # the usual case (NaN, inf: no)
        return value
    return opt_float(obj, key, _E, lo=0.0)


#: What :func:`_hot_fields` gives: ``(enc, sr, samples, chunk_id, context_id, the base64
#: length of the audio, its length in bytes)``.
_Fields: TypeAlias = tuple[str, int, int, "int | None", "str | None", int, int]


def _hot_fields(obj: dict[str, Any]) -> _Fields | None:
    """An audio frame's fields but ``audio`` and ``idx``, when each is present (``chunk_id``,
    ``context_id``: or absent) and a plain in-range value; else None (the general code of
    :func:`_parse_audio` then decides, and names what is wrong)."""
    get = obj.get
    enc, sr, samples, chunk_id, ctx = (
        get("enc"), get("sr"), get("samples"), get("chunk_id"), get("context_id")
    )
    if not (
        type(sr) is int
        and type(samples) is int
        and (type(chunk_id) is int or chunk_id is None)
        and (enc == "pcm_s16le" or (type(enc) is str and enc in ENCODINGS))
        and 0 < sr <= _MAX_INT
        and 0 <= samples <= _MAX_INT
        and (chunk_id is None or 0 <= chunk_id <= _MAX_INT)
        and (ctx is None or (type(ctx) is str and 0 < len(ctx) <= 256))
    ):
        return None
    size = samples * SAMPLE_WIDTH[enc]
    return enc, sr, samples, chunk_id, ctx, (size + 2) // 3 * 4, size


def _hot_frame(audio: str, idx: int, fields: _Fields) -> AudioFrame | None:
    """The frame, when ``audio`` is strict base64 of exactly the length ``fields`` say (its
    bytes are decoded now, once: the decode is the check); else None."""
    enc, sr, samples, chunk_id, ctx, length, size = fields
    if len(audio) != length:
        return None
    try:
        data = _b64decode_exact(audio)
    except (binascii.Error, ValueError):
        return None
    if len(data) != size:
        return None
    return _decoded_audio_frame(audio, enc, idx, sr, samples, chunk_id, ctx, [data])


def _audio_hot(audio: str, obj: dict[str, Any]) -> AudioFrame | None:
    """The frame, when every field of ``obj`` (all but ``audio``) is present and a plain in-range
    value and ``audio`` is strict base64 of exactly the length ``samples`` says; else None (the
    general code of :func:`_parse_audio` then decides, and names what is wrong)."""
    idx = obj.get("idx")
    if type(idx) is not int or not 0 <= idx <= _MAX_INT:
        return None
    fields = _hot_fields(obj)
    return None if fields is None else _hot_frame(audio, idx, fields)


def _parse_audio(obj: dict[str, Any]) -> AudioFrame:
    audio = obj["audio"]
    if not isinstance(audio, str):
        raise bad(_E, "audio", "a base64 string", audio)
    frame = _audio_hot(audio, obj) if type(audio) is str and _fast.ENABLED else None
    if frame is not None:
        return frame
    enc = obj.get("enc")
    if enc is None:
        enc = "pcm_s16le"
    elif not isinstance(enc, str):
        raise bad(_E, "enc", "a string", enc)
    elif enc not in ENCODINGS:
        raise _E(f"enc: unknown encoding {enc!r} (pcm_s16le, mulaw, alaw)", field="enc")
    sr = _uint(obj, "sr", 24000)
    if not sr:
        raise _E("sr: must be positive", field="sr")
    samples = _uint(obj, "samples")
    idx = _uint(obj, "idx", 0) or 0
    chunk_id = _uint(obj, "chunk_id")
    context_id = _opt_context_id(obj, _E)
    size = _b64_size(audio)  # the payload's length, known without decoding it
    if size is None:
        raise _E("audio: invalid base64", field="audio")
    width = SAMPLE_WIDTH[enc]
    if size % width:
        raise _E(f"audio: {size} bytes is not a whole number of {enc} samples", field="audio")
    if samples is None:
        samples = size // width
    elif samples * width != size:
        raise _E(
            f"samples: {samples} does not match the payload ({size // width} {enc} samples)",
            field="samples",
        )
    frame = AudioFrame(audio, enc, idx, sr, samples, chunk_id, context_id, [], "idx" in obj)
    if _fast.ENABLED:  # data may decode without checking again (off: decoded strictly)
        _set_checked(frame, True)
    return frame


def _parse_words(obj: dict[str, Any]) -> WordTimestampsFrame:
    raw = obj["word_timestamps"]
    if not isinstance(raw, list):
        raise bad(_E, "word_timestamps", "an array", raw)
    words = []
    for i, w in enumerate(raw):
        p = f"word_timestamps[{i}]."
        if not isinstance(w, dict):
            raise bad(_E, f"word_timestamps[{i}]", "an object", w)
        start = opt_float(w, "start_ms", _E, lo=0, prefix=p) or 0.0
        end = opt_float(w, "end_ms", _E, lo=0, prefix=p)
        end = start if end is None else end
        if end < start:
            raise _E(f"{p}end_ms: before start_ms", field=p + "end_ms")
        cs = opt_int(w, "char_start", _E, lo=0, prefix=p) or 0
        ce = opt_int(w, "char_end", _E, lo=0, prefix=p)
        score = opt_float(w, "score", _E, prefix=p)
        words.append(
            WordTimestamp(
                req_str(w, "word", _E, p),
                start,
                end,
                cs,
                cs if ce is None else ce,
                1.0 if score is None else score,
            )
        )
    return WordTimestampsFrame(tuple(words), _uint(obj, "chunk_id"), _opt_context_id(obj, _E))


def _parse_usage(obj: dict[str, Any]) -> Usage | None:
    raw = obj.get("usage")
    return None if raw is None else Usage.from_dict(raw)


def _parse_final(obj: dict[str, Any]) -> FinalFrame:
    debug = obj.get("debug")
    if debug is not None and not isinstance(debug, dict):
        raise bad(_E, "debug", "an object", debug)
    return FinalFrame(
        context_id=_opt_context_id(obj, _E),
        total_audio_seconds=_nnfloat(obj, "total_audio_seconds"),
        total_text_chunks=_uint(obj, "total_text_chunks"),
        total_audio_chunks=_uint(obj, "total_audio_chunks"),
        chunks=_uint(obj, "chunks"),
        total_samples=_uint(obj, "total_samples"),
        dur_ms=_nnfloat(obj, "dur_ms"),
        gen_ms=_nnfloat(obj, "gen_ms"),
        rtf=_nnfloat(obj, "rtf"),
        debug=debug,
        usage=_parse_usage(obj),
    )


def _parse_error(obj: dict[str, Any]) -> ErrorFrame:
    message = obj["error"]
    if isinstance(message, dict):  # legacy nested envelope {"error": {"code", "message"}}
        code_value = message.get("code")
        text = message.get("message")
        return ErrorFrame(
            text if isinstance(text, str) else "error",
            code_value if isinstance(code_value, str) else None,
            None,
            _opt_context_id(obj, _E),
        )
    if not isinstance(message, str):
        message = str(message)
    request_id = obj.get("request_id")
    retry = opt_float(obj, "retry_after", _E, lo=0)
    return ErrorFrame(
        message,
        opt_str(obj, "error_code", _E),
        opt_int(obj, "code", _E, lo=0, hi=_MAX_INT),
        _opt_context_id(obj, _E),
        None if request_id is None else str(request_id),
        retry,
    )


def _req_ctx(obj: dict[str, Any], key: str) -> str:
    ctx = _opt_context_id(obj, _E)
    if ctx is None:
        raise _E(f"{key}: context_id is required", field="context_id")
    return ctx


def _parse_settings(obj: dict[str, Any]) -> SettingsUpdatedFrame:
    settings = obj.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise bad(_E, "settings", "an object", settings)
    return SettingsUpdatedFrame(settings)


def _truthy(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key)
    return value is not None and value is not False and value != 0 and value != ""


#: json's C scanner (see :mod:`._fast`; anything it does not take whole goes through
#: :func:`loads_object` for the same result).
_scan_object = _fast.scan_object


def parse_server_message(text: str | bytes) -> ServerMessage:
    """Parse one server frame (client role), dispatching by the key present (Appendix B order)."""
    if not _fast.ENABLED:
        return _parse_ladder(loads_object(text))
    obj: Any = None
    if type(text) is str:
        if text.startswith(_AUDIO_HEAD):
            frame = _split_audio(text, _AUDIO_START)
            if frame is not None:
                return frame
        elif text.startswith(_AUDIO_HEAD_SPACED):
            frame = _split_audio(text, _AUDIO_START_SPACED)
            if frame is not None:
                return frame
        elif text.startswith(_GENERATION_HEAD):
            started = _split_generation_started(text)
            if started is not None:
                return started
        if text[:1] == "{":
            try:
                obj, end = _scan_object(text, 0)
            except (StopIteration, ValueError, RecursionError):
                obj = None
            else:
                if end != len(text):
                    obj = None  # trailing whitespace or garbage: json.loads decides
    if obj is None:
        obj = loads_object(text)
    return _parse_object(obj)


#: How every audio frame of the server starts: its base64 string first (compact, or as
#: ``json.dumps`` writes it by default).
_AUDIO_HEAD = '{"audio":"'
_AUDIO_START = len(_AUDIO_HEAD)
_AUDIO_HEAD_SPACED = '{"audio": "'
_AUDIO_START_SPACED = len(_AUDIO_HEAD_SPACED)
_IDX_KEY = '"idx":'
_IDX_QUOTED = '"idx"'
_CHUNK_KEY = '"chunk_id":'
_CHUNK_QUOTED = '"chunk_id"'
_UNKNOWN: Any = object()  # not in a memo yet

#: The other fields of the server's audio frames, by template: the text after a frame's base64
#: with the digits of its ``idx`` cut out (within a chunk the server's frames differ only in
#: their base64 and ``idx``). A template is parsed and checked once (:func:`_template`): its
#: :func:`_hot_fields`, or None for one the general path must read.
_TEMPLATES: dict[str, _Fields | None] = {}
_MAX_TEMPLATES = 256  # then the memo starts again (a new chunk or context: a new template)
_MAX_TEMPLATE_SIZE = 512  # longer ones are not kept (the scanner reads them each time)
#: The template of the last frame read through :data:`_TEMPLATES`: (its text before idx's
#: digits, after them, its fields). A frame that starts and ends as it does is checked against
#: it, with no key to build (the usual case: the frames of a chunk in a row).
_last_template: tuple[str, str, _Fields] = ("\0", "\0", ("", 0, 0, None, None, 0, 0))
#: Templates with the digits of ``chunk_id`` cut out too (``(that text, where idx's digits
#: were, where chunk_id's were)``): the fields of a new chunk's template come from here without
#: a parse (the first audio of a turn is the first of a new chunk). Only for templates with no
#: backslash and one ``"chunk_id"``; their ``chunk_id`` is a placeholder.
_LAYOUTS: dict[tuple[str, int, int], _Fields | None] = {}
#: The last layout with idx before chunk_id, in three pieces (before idx's digits, between,
#: after chunk_id's) and its fields: a frame of a new chunk laid out as it is, is checked
#: against it without a key to build (the first audio of the next turn, usually).
_last_layout: tuple[str, str, str, _Fields] = ("\0", "\0", "\0", ("", 0, 0, None, None, 0, 0))


def _split_audio(text: str, start: int) -> AudioFrame | None:
    """The frame ``{"audio":"<base64>",<the other fields>}`` without running the JSON scanner
    over its base64 (about 1,300 characters at 20 ms of 24 kHz, most of a frame's parse time):
    the string ends at the first quote (base64 has no backslash, so no escaped quote can come
    first: any backslash, like anything else that is not base64, fails the strict decode).
    The other fields come from their template (see :data:`_TEMPLATES`) when ``idx`` is a plain
    integer, else the scanner parses them as an object. None, for the general path to decide,
    when anything is unusual: no comma after the string, another ``"audio"`` key or an
    ``"error"`` key in the rest (a duplicate would change the meaning; the scanner has decoded
    any escaped key), text after the object, or anything :func:`_hot_fields` declines."""
    end = text.find('"', start)
    if end < 0:
        return None
    fields: _Fields | None
    digits: str | None
    prefix, suffix, fields = _last_template
    if text.startswith(prefix, end) and text.endswith(suffix):  # as the last frame (usual)
        digits = text[end + len(prefix) : len(text) - len(suffix)]
    else:
        digits, fields = _find_template(text, end)
    if fields is not None and digits is not None and _plain_uint(digits):
        return _hot_frame(text[start:end], int(digits), fields)
    if digits is not None or text[end + 1 : end + 2] != ",":
        return None  # idx is there, unusual (or its template is): the general path reads it
    obj = _rest_object("{" + text[end + 2 :])
    return None if obj is None else _audio_hot(text[start:end], obj)


def _rest_object(rest: str) -> dict[str, Any] | None:
    """``rest`` (the fields after an audio frame's base64, as an object) parsed by the
    scanner; None when it is not a whole object, or has an ``audio`` or ``error`` key (a
    duplicate would change the meaning; the scanner has decoded any escaped key)."""
    try:
        obj, stop = _scan_object(rest, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    if stop != len(rest) or type(obj) is not dict or "audio" in obj or "error" in obj:
        return None
    return obj


#: How the server writes ``generation_started`` on /ws/tts/stream (a turn's first message):
#: ``{"generation_started":true,"chunk_id":<n>,"text":<string>}``.
_GENERATION_HEAD = '{"generation_started":true,"chunk_id":'
_GENERATION_START = len(_GENERATION_HEAD)
_GENERATION_TEXT = ',"text":"'
_scan_string: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _split_generation_started(text: str) -> GenerationStartedFrame | None:
    """The frame ``{"generation_started":true,"chunk_id":<n>,"text":<string>}`` read in place:
    ``chunk_id`` a plain integer, then ``text`` decoded by json's C string scanner, then the end
    of the object. None, for the general path to decide, for anything else (other keys, another
    order, spaces, a text that is not a valid JSON string)."""
    stop = text.find(",", _GENERATION_START)
    digits = text[_GENERATION_START:stop]
    if stop < 0 or not _plain_uint(digits) or not text.startswith(_GENERATION_TEXT, stop):
        return None
    try:
        value, end = _scan_string(text, stop + len(_GENERATION_TEXT))
    except ValueError:
        return None
    if end != len(text) - 1 or text[end] != "}":
        return None
    return _generation_started_frame(int(digits), value, None)


def _find_template(text: str, end: int) -> tuple[str | None, _Fields | None]:
    """The text of the frame's ``idx`` value (up to the next comma) and the fields of its
    template (``end``: where its base64 ends); ``(None, None)`` when it has no ``"idx":`` or
    its template is too long to keep (the scanner then reads the other fields)."""
    global _last_template
    before, between, after, base = _last_layout
    if text.startswith(before, end):  # laid out as the last layout (a new chunk, usually)
        at = end + len(before)
        stop = text.find(",", at)
        if stop > 0 and text.startswith(between, stop) and text.endswith(after):
            chunk = text[stop + len(between) : len(text) - len(after)]
            if _plain_uint(chunk):
                enc, sr, samples, _, ctx, length, size = base
                found: _Fields = (enc, sr, samples, int(chunk), ctx, length, size)
                _last_template = (text[end:at], text[stop:], found)
                return text[at:stop], found
    at = text.find(_IDX_KEY, end) + 6
    if at < 6:
        return None, None
    if text[at : at + 1] == " ":
        at += 1
    stop = text.find(",", at)
    if stop < 0:
        stop = len(text) - 1
    key = text[end:at] + text[stop:]
    if len(key) > _MAX_TEMPLATE_SIZE:
        return None, None
    fields = _TEMPLATES.get(key, _UNKNOWN)
    if fields is _UNKNOWN:
        fields = _template(key, at - end)
    if fields is not None:
        _last_template = (text[end:at], text[stop:], fields)
    return text[at:stop], fields


def _template(key: str, at: int) -> _Fields | None:
    """The fields of the template ``key`` (``idx``'s digits were at ``at``), when the digits
    are ``idx``'s value (its last occurrence, not part of a string or another key) and nothing
    else depends on them. Without a backslash in it, every quote of the template delimits a
    string, so its only ``"idx":`` is that key (one parse, with idx 0, tells the rest); else it
    is parsed with idx 0 and with 1, and the two must differ in ``idx`` as the digits do. None
    when there is no comma after the base64, when a parse is not a whole object without
    ``audio`` and ``error`` keys, or when :func:`_hot_fields` declines. Kept in
    :data:`_TEMPLATES` either way."""
    fields = None
    if key[1:2] == ",":
        if "\\" not in key and key.count(_IDX_QUOTED) == 1:
            fields = _plain_template(key, at)
        else:
            zero = _template_object(key, ((at, "0"),))
            one = _template_object(key, ((at, "1"),)) if zero is not None else None
            if zero is not None and one is not None:
                idx0, idx1 = zero.get("idx"), one.get("idx")
                if type(idx0) is int and type(idx1) is int and idx0 == 0 and idx1 == 1:
                    fields = _hot_fields(zero)
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()
        _LAYOUTS.clear()
    _TEMPLATES[key] = fields
    return fields


def _plain_template(key: str, at: int) -> _Fields | None:
    """:func:`_template` of a template with no backslash and one ``"idx"``: from its layout
    (see :data:`_LAYOUTS`) when it has one ``"chunk_id"`` with a plain integer value, else by
    one parse with idx 0."""
    c = key.find(_CHUNK_KEY) + len(_CHUNK_KEY)
    if c >= len(_CHUNK_KEY) and key.count(_CHUNK_QUOTED) == 1:
        if key[c : c + 1] == " ":
            c += 1
        stop = key.find(",", c)
        if stop < 0:
            stop = len(key) - 1
        digits = key[c:stop]
        if (stop <= at - 6 or c >= at) and _plain_uint(digits):
            layout = (key[:c] + key[stop:], at - len(digits) if stop <= at else at, c)
            base = _LAYOUTS.get(layout, _UNKNOWN)
            if base is _UNKNOWN:
                base = _LAYOUTS[layout] = _layout_fields(*layout)
            if base is None:
                return None
            text, idx_at, chunk_at = layout
            if idx_at < chunk_at:
                global _last_layout
                _last_layout = (text[:idx_at], text[idx_at:chunk_at], text[chunk_at:], base)
            enc, sr, samples, _, ctx, length, size = base
            return enc, sr, samples, int(digits), ctx, length, size
    obj = _template_object(key, ((at, "0"),))
    if obj is None:
        return None
    idx = obj.get("idx")
    return _hot_fields(obj) if type(idx) is int and idx == 0 else None


def _layout_fields(layout: str, idx_at: int, chunk_at: int) -> _Fields | None:
    """The fields of a layout (a template with no backslash, one ``"idx"`` and one
    ``"chunk_id"``: each is that key, and its value is what is at its place), parsed with 0 at
    both places; ``chunk_id`` is then a placeholder."""
    obj = _template_object(layout, ((idx_at, "0"), (chunk_at, "0")))
    if obj is None:
        return None
    idx, chunk = obj.get("idx"), obj.get("chunk_id")
    if type(idx) is not int or idx != 0 or type(chunk) is not int or chunk != 0:
        return None
    return _hot_fields(obj)


def _plain_uint(digits: str) -> bool:
    """Whether ``digits`` is a JSON integer from 0 to below 2**53 as written plainly: ASCII
    digits, no leading zero, at most 15 of them."""
    return (
        len(digits) < 16
        and digits.isdigit()
        and digits.isascii()
        and (digits[0] != "0" or len(digits) == 1)
    )


def _template_object(key: str, values: tuple[tuple[int, str], ...]) -> dict[str, Any] | None:
    """The template ``key`` as the object it is with each ``(place, digits)`` of ``values`` at
    its place (see :func:`_rest_object`)."""
    parts, last = ["{"], 2  # key[:2]: the quote that ends the base64, and its comma
    for place, digits in sorted(values):
        parts += (key[last:place], digits)
        last = place
    parts.append(key[last:])
    return _rest_object("".join(parts))


def _parse_object(obj: dict[str, Any]) -> ServerMessage:
    """A server frame from its JSON object: by the kind its first key names when no key of an
    earlier kind is present (how the server writes them), else by :func:`_parse_ladder`."""
    if "audio" in obj and "error" not in obj:
        return _parse_audio(obj)  # the hot path
    for key in obj:
        kind = _BY_KEY.get(key)
        if kind is not None:
            flag, parse, earlier = kind
            value = obj[key]
            truthy = value is not None and value is not False and value != 0 and value != ""
            if (truthy or not flag) and earlier.isdisjoint(obj):
                return parse(obj)
        break
    return _parse_ladder(obj)


def _parse_ladder(obj: dict[str, Any]) -> ServerMessage:
    """The general rule: the first kind of :data:`_KINDS` whose key is present (a flag key:
    present and truthy) decides; audio first unless there is an error."""
    if "audio" in obj and "error" not in obj:
        return _parse_audio(obj)
    for key, flag, parse in _KINDS:
        if _truthy(obj, key) if flag else key in obj:
            return parse(obj)
    return UnknownFrame(tuple(obj))


def _parse_generation_started(obj: dict[str, Any]) -> GenerationStartedFrame:
    return GenerationStartedFrame(
        _uint(obj, "chunk_id", 0) or 0, opt_str(obj, "text", _E) or "", _opt_context_id(obj, _E)
    )


def _parse_session_closed(obj: dict[str, Any]) -> SessionClosedFrame:
    return SessionClosedFrame(
        _nnfloat(obj, "total_audio_seconds"),
        _uint(obj, "total_text_chunks"),
        _uint(obj, "total_audio_chunks"),
        _parse_usage(obj),
    )


def _parse_chunk_complete(obj: dict[str, Any]) -> ChunkCompleteFrame:
    return ChunkCompleteFrame(
        _uint(obj, "chunk_id", 0) or 0,
        _nnfloat(obj, "audio_seconds") or 0.0,
        _nnfloat(obj, "gen_ms") or 0.0,
        _opt_context_id(obj, _E),
    )


def _parse_warning(obj: dict[str, Any]) -> WarningFrame:
    warning = obj["warning"]
    return WarningFrame(
        warning if isinstance(warning, str) else str(warning), _opt_context_id(obj, _E)
    )


def _parse_session_started(obj: dict[str, Any]) -> SessionStartedFrame:
    sid = obj.get("session_id")
    return SessionStartedFrame(None if sid is None else str(sid))


#: Server frame kinds in precedence order (protocol.md, the message catalogue): (key, whether
#: it is a flag that must be truthy rather than merely present, parser).
_KINDS: tuple[tuple[str, bool, Callable[[dict[str, Any]], ServerMessage]], ...] = (
    ("error", True, _parse_error),
    ("generation_started", True, _parse_generation_started),
    ("word_timestamps", False, _parse_words),
    ("final", True, _parse_final),
    ("session_closed", True, _parse_session_closed),
    ("chunk_complete", True, _parse_chunk_complete),
    ("interrupted", True, lambda obj: InterruptedFrame(_opt_context_id(obj, _E))),
    ("settings_updated", True, _parse_settings),
    ("context_created", True,
     lambda obj: ContextCreatedFrame(_req_ctx(obj, "context_created"))),
    ("context_closed", True,
     lambda obj: ContextClosedFrame(_req_ctx(obj, "context_closed"), _parse_usage(obj))),
    ("context_timeout", True,
     lambda obj: ContextTimeoutFrame(_req_ctx(obj, "context_timeout"))),
    ("warning", False, _parse_warning),
    ("session_started", True, _parse_session_started),
    ("is_final", True, lambda obj: IsFinalFrame(_opt_context_id(obj, _E))),
)
#: key -> (flag, parser, the keys of every kind before it, "audio" included)
_BY_KEY: dict[str, tuple[bool, Callable[[dict[str, Any]], ServerMessage], frozenset[str]]] = {
    key: (flag, parse, frozenset(["audio", *(k for k, _, _ in _KINDS[:i])]))
    for i, (key, flag, parse) in enumerate(_KINDS)
}
