"""``EspeakEngine``: the embedded voice, eSpeak NG driven through ``ctypes``.

Needs the ``voice`` extra (``pip install 'kugelwire[voice]'``): the ``espeakng-loader`` wheel
ships ``libespeak-ng`` and its data, ``soxr`` resamples. eSpeak is a formant synthesiser: robotic
but intelligible, tiny, and faster than real time by three orders of magnitude, which makes it a
good voice for development, tests and demos of the protocol.

How a chunk is spoken
---------------------
The chunk's text is cut into *segments*: at every ``<break>`` (rendered as exact silence of its
length, not by eSpeak), at sentence ends once a segment holds :attr:`EspeakEngine.segment_chars`
characters, and at whitespace when a sentence runs past :attr:`EspeakEngine.max_segment_chars`.
Each segment is one ``espeak_Synth`` call in SSML mode (``<prosody rate>`` spans become SSML
prosody, ``<spell>`` characters become ``say-as characters``) and happens inside one generator
step while holding the process-wide eSpeak lock; nothing of eSpeak's state survives a ``yield``
(voice and rate are set again for every segment). A segment keeps eSpeak's sentence pause
after it only when it ends a sentence (``.!?…``); otherwise its trailing silence is cut to 20 ms,
so a stale or max-buffer chunk flows into the next one. eSpeak renders 22050 Hz; a per-chunk
``soxr`` stream (quality HQ) resamples to ``params.sample_rate``. Audio is yielded in pieces of
:attr:`EspeakEngine.piece_ms`, each segment's word timings right after its audio.

``<spell>`` spans are spoken character by character: letters and digits as eSpeak says single
characters, ``@ . - _`` and whitespace by their names in the language (protocol.md#spell: en
at/dot/dash/underscore, de ät/Punkt/Strich/Unterstrich, fr, es, it, pt, nl; other languages
leave them to eSpeak), with a 200 ms beat every ``group`` characters (only when the span holds
no whitespace; rendered as silence between eSpeak calls, like breaks). ``params.speed`` sets
eSpeak's rate (175 words per minute times speed, clamped to 80-450); ``<prosody rate>`` scales
it for its span.

Word timestamps: one per word of ``chunk.text`` (whitespace-separated, leading and trailing
punctuation stripped, tokens of punctuation only dropped) and one per spelled character, whose
``word`` is the name spoken (``"dot"``) or the character itself (``"a"``). A word starts at
eSpeak's word event for it; words eSpeak merges into one event ("of the") share that event's time
by character length; a word ends where the next one starts, the last one of a run where its
sound ends. Times are whole milliseconds from the start of the chunk's audio, monotonic and
inside its duration. The engine yields them whatever ``params.word_timestamps`` says (the
session drops them when they were not asked for).

Cancellation: the synth callback returns 1 (eSpeak aborts the segment) as soon as the
:class:`~kugelwire.synth.CancelToken` is set; between pieces the generator checks it and returns.

Voices
------
``params.voice_id`` picks a voice variant (and, for English, an accent); ``params.language``
picks the language (``en`` -> the voice's English accent, ``en-gb`` -> ``en``, ``de``, ``fr``,
``es``, ``it``, ``pt``, ``pt-br``, ``nl``, ``pl``, ``ru``, ``sv``, ``zh`` -> ``cmn``, ...; any
other tag is tried as an eSpeak voice name, then its primary subtag, then English). The eSpeak
voice used is ``<language voice>+<variant>``:

=============================  =====================  ==========================================
``voice_id``                   English voice          Other languages (e.g. ``language="de"``)
=============================  =====================  ==========================================
1, ``None``, unknown ids       ``en-us+klatt``        ``de+klatt`` (the default: most intelligible)
2                              ``en-us+klatt2``       ``de+klatt2``
3                              ``en-us+klatt3``       ``de+klatt3``
4                              ``en-gb-x-rp+klatt``   ``de+klatt`` (British RP accent for English)
5                              ``en-us+f3``           ``de+f3`` (female formant variant)
6                              ``en-us+m3``           ``de+m3`` (male formant variant)
123, 280, 456, 1071, 1072      as 2, 6, 5, 1 and 5    (the ids of the service's and the SDKs'
                                                      documentation examples)
=============================  =====================  ==========================================

These ids are the engine's ``voices`` catalogue (:data:`ESPEAK_VOICES`); a strict server refuses
every other id.

String ids holding a number (``"2"``) count as that number, and handles (``"espeak-f3"``) as
their voice. The engine itself never refuses a chunk: an id outside the catalogue (only a
lenient server lets one through) speaks with the default voice.

Concurrency: eSpeak has process-wide state, so ``max_concurrency`` is 1 and every engine
instance shares one lock; the library is initialised once per process, at the first
:meth:`EspeakEngine.warm_up` (done by the constructor unless ``warm=False``).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

try:
    import espeakng_loader  # type: ignore[import-untyped]
    import numpy as np
    import soxr  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "EspeakEngine needs the 'voice' extra: pip install 'kugelwire[voice]' "
        f"(missing: {exc.name})"
    ) from exc

from ..protocol.config import Voice, VoiceCatalogue
from ..protocol.messages import WordTimestamp
from ..protocol.sessions import SynthesisParams
from ..protocol.text import ProsodySpan, SpellSpan, TextChunk
from ._base import CancelToken, SynthesisItem
from ._spell_names import names_for

__all__ = [
    "DEFAULT_VOICE",
    "ESPEAK_VOICES",
    "VOICES",
    "EspeakEngine",
    "EspeakRun",
    "espeak_voice",
]

#: ``voice_id`` -> (English voice, variant); see the module docstring.
VOICES: Final[Mapping[int, tuple[str, str]]] = {
    1: ("en-us", "klatt"),
    2: ("en-us", "klatt2"),
    3: ("en-us", "klatt3"),
    4: ("en-gb-x-rp", "klatt"),
    5: ("en-us", "f3"),
    6: ("en-us", "m3"),
    123: ("en-us", "klatt2"),
    280: ("en-us", "m3"),
    456: ("en-us", "f3"),
    1071: ("en-us", "klatt"),
    1072: ("en-us", "f3"),
}
DEFAULT_VOICE: Final = 1

_VOICE_INFO: Final = {
    1: ("Klatt", "male", "espeak-klatt"),
    2: ("Klatt 2", "male", "espeak-klatt2"),
    3: ("Klatt 3", "male", "espeak-klatt3"),
    4: ("Klatt British", "male", "espeak-rp"),
    5: ("Formant F3", "female", "espeak-f3"),
    6: ("Formant M3", "male", "espeak-m3"),
    123: ("Example A", "male", "espeak-example-a"),
    280: ("Example B", "male", "espeak-example-b"),
    456: ("Example C", "female", "espeak-example-c"),
    1071: ("Narrator", "male", "espeak-narrator"),
    1072: ("Character", "female", "espeak-character"),
}
#: The engine's voices (``GET /v1/voices``; what ``voice_id`` may name on a strict server).
ESPEAK_VOICES: Final = VoiceCatalogue.of(
    Voice(
        vid,
        f"eSpeak {_VOICE_INFO[vid][0]}",
        "en",
        engine_voice=f"{accent}+{variant}",
        handle=_VOICE_INFO[vid][2],
        sex=_VOICE_INFO[vid][1],
        description="eSpeak NG formant voice (any language via the request's language)",
        supported_languages=("en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "sv"),
        sample_text="Hello, this is the embedded voice.",
    )
    for vid, (accent, variant) in VOICES.items()
)

#: ``language`` (lower case) -> eSpeak language voice; "en" uses the voice's accent.
_LANGUAGES: Final[Mapping[str, str]] = {
    "en-us": "en-us",
    "en-gb": "en",
    "de": "de",
    "fr": "fr",
    "es": "es",
    "it": "it",
    "pt": "pt",
    "pt-br": "pt-br",
    "nl": "nl",
    "pl": "pl",
    "ru": "ru",
    "sv": "sv",
    "da": "da",
    "fi": "fi",
    "nb": "nb",
    "no": "nb",
    "cs": "cs",
    "tr": "tr",
    "el": "el",
    "hu": "hu",
    "ro": "ro",
    "uk": "uk",
    "zh": "cmn",
    "ja": "ja",
    "ko": "ko",
    "ar": "ar",
    "hi": "hi",
}

# eSpeak NG's C API (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000
_CHARS_UTF8: Final = 1
_SSML: Final = 0x10
_ENDPAUSE: Final = 0x1000
_POS_CHARACTER: Final = 1
_EVENT_LIST_TERMINATED: Final = 0
_EVENT_WORD: Final = 1
_PARAM_RATE: Final = 1
_RATE_MIN: Final = 80
_RATE_MAX: Final = 450
_RATE_NORMAL: Final = 175

#: eSpeak's own output rate (checked against espeak_Initialize's answer).
ESPEAK_RATE: Final = 22050

_GROUP_BEAT_MS: Final = 200
_TAIL_KEEP: Final = ESPEAK_RATE // 50  # 20 ms of an eSpeak call's trailing silence are kept
_SILENCE: Final = 100  # |sample| at or below this counts as silence when trimming word ends
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|[。！？]+\s*|\n+")
_TOKEN = re.compile(r"\S+")
_TERMINATORS: Final = frozenset(".!?…。！？")
_XML_ESCAPES: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


class _Id(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    )


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Sink:
    """Where the synth callback puts one segment's audio and word events."""

    __slots__ = ("aborted", "audio", "cancel", "error", "words")

    def __init__(self, cancel: CancelToken) -> None:
        self.cancel = cancel
        self.audio = bytearray()
        self.words: list[tuple[int, int]] = []  # (text_position, sample)
        self.aborted = False
        self.error: BaseException | None = None


def _short_data_parent(data_dir: str) -> str:
    """A short directory holding ``espeak-ng-data`` (eSpeak truncates long paths)."""
    parent = os.path.dirname(os.path.abspath(data_dir))
    if len(parent) <= 60 and os.path.basename(data_dir) == "espeak-ng-data":
        return parent
    base = "/tmp" if os.path.isdir("/tmp") else None
    tmp = tempfile.mkdtemp(prefix="kwesp", dir=base)
    atexit.register(shutil.rmtree, tmp, True)
    target = os.path.join(tmp, "espeak-ng-data")
    try:
        os.symlink(data_dir, target, target_is_directory=True)
    except OSError:  # no symlinks (Windows without the privilege): copy the data (~20 MB)
        shutil.copytree(data_dir, target)
    return tmp


class _Espeak:
    """The process-wide libespeak-ng instance; every method needs ``_LOCK`` held."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_CALLBACK,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        path = _short_data_parent(espeakng_loader.get_data_path())
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(path), _INITIALIZE_DONT_EXIT
        )
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak_Initialize failed or changed rate (returned {rate})")
        self._lib = lib
        self._sink: _Sink | None = None
        self._callback = _CALLBACK(self._on_audio)  # referenced for the process lifetime
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._known: dict[str, bool] = {}

    def _on_audio(self, wav: Any, samples: int, events: Any) -> int:
        sink = self._sink
        if sink is None:
            return 1
        try:
            if samples > 0 and wav:
                sink.audio += ctypes.string_at(wav, samples * 2)
            if events:
                i = 0
                while (ev := events[i]).type != _EVENT_LIST_TERMINATED:
                    if ev.type == _EVENT_WORD:
                        sink.words.append((ev.text_position, ev.sample))
                    i += 1
            if sink.cancel.cancelled:
                sink.aborted = True
                return 1
        except BaseException as exc:  # never let an exception unwind through C
            sink.error = exc
            return 1
        return 0

    def set_voice(self, name: str) -> bool:
        """Select eSpeak voice ``name``; False (voice unchanged) if eSpeak does not know it."""
        if name == self._voice:
            return True
        if self._known.get(name) is False:
            return False
        ok = int(self._lib.espeak_SetVoiceByName(name.encode())) == 0
        self._known[name] = ok
        self._voice = name if ok else None  # a failed call may have changed the voice
        return ok

    def synth(self, ssml: str, rate: int, endpause: bool, cancel: CancelToken) -> _Sink:
        """Speak one SSML document at ``rate`` words per minute; the sink holds the result."""
        sink = _Sink(cancel)
        if cancel.cancelled:
            sink.aborted = True
            return sink
        self._lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        data = ssml.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | _SSML | (_ENDPAUSE if endpause else 0)
        self._sink = sink
        try:
            err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        finally:
            self._sink = None
        if sink.error is not None:
            raise sink.error
        if err != 0 and not sink.aborted:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        return sink


_LOCK = threading.Lock()
_ESPEAK: _Espeak | None = None


def _espeak() -> _Espeak:
    """The shared instance (``_LOCK`` must be held)."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


def _voice_number(voice_id: int | str | None) -> int:
    voice = ESPEAK_VOICES.find(voice_id)
    return voice.id if voice is not None else DEFAULT_VOICE


def espeak_voice(voice_id: int | str | None, language: str | None) -> list[str]:
    """eSpeak voice names to try, best first, for a voice id and a language tag."""
    accent, variant = VOICES[_voice_number(voice_id)]
    tag = (language or "en").strip().lower().replace("_", "-")
    primary = tag.split("-", 1)[0]
    names: list[str] = []
    if tag == "en" or (primary == "en" and tag not in _LANGUAGES):
        names.append(accent)
    elif tag in _LANGUAGES:
        names.append(_LANGUAGES[tag])
    else:
        names += [tag, _LANGUAGES.get(primary, primary)]
    names.append(accent)
    out: list[str] = []
    for name in names:
        full = f"{name}+{variant}"
        if full not in out:
            out.append(full)
    if f"en-us+{variant}" not in out:
        out.append(f"en-us+{variant}")
    return out


# -- text planning ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Word:
    start: int  # offsets into chunk.text
    end: int
    label: str


@dataclass(frozen=True, slots=True)
class _Segment:
    start: int
    end: int
    pause_ms: int  # silence before this segment


def _strip_punct(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return start, end


def _spell_mask(text: str, spells: Sequence[SpellSpan]) -> list[SpellSpan | None]:
    mask: list[SpellSpan | None] = [None] * len(text)
    for span in spells:
        for i in range(max(0, span.start), min(span.end, len(text))):
            mask[i] = span
    return mask


def _plan_words(
    text: str, mask: Sequence[SpellSpan | None], names: Mapping[str, str], space: str | None
) -> tuple[list[_Word], list[int]]:
    """The chunk's words in order and, per character, the index of its word (or -1)."""
    words: list[_Word] = []
    owner = [-1] * len(text)
    i = 0
    n = len(text)
    while i < n:
        if mask[i] is not None:
            ch = text[i]
            label = space if ch.isspace() else names.get(ch, ch)
            if label is not None:
                owner[i] = len(words)
                words.append(_Word(i, i + 1, label))
            i += 1
            continue
        j = i
        while j < n and mask[j] is None:
            j += 1
        for m in _TOKEN.finditer(text, i, j):
            start, end = _strip_punct(text, m.start(), m.end())
            if start < end:
                for k in range(m.start(), m.end()):
                    owner[k] = len(words)
                words.append(_Word(start, end, text[start:end]))
        i = j
    return words, owner


def _plan_segments(
    chunk: TextChunk, mask: Sequence[SpellSpan | None], min_chars: int, max_chars: int
) -> list[_Segment]:
    """Cut the chunk at breaks and group beats (with their silence), at sentence ends (segments
    >= ``min_chars``), and at whitespace when a segment would exceed ``max_chars``."""
    text = chunk.text
    n = len(text)
    pauses: dict[int, int] = {}
    for mark in chunk.breaks:
        if mark.ms > 0:
            pos = min(max(mark.offset, 0), n)
            pauses[pos] = pauses.get(pos, 0) + mark.ms
    for span in chunk.spells:  # a beat every `group` characters of a span without whitespace
        if span.group and not any(c.isspace() for c in text[span.start : span.end]):
            for pos in range(span.start + span.group, min(span.end, n), span.group):
                pauses[pos] = pauses.get(pos, 0) + _GROUP_BEAT_MS
    sentence_ends = {
        m.end() for m in _SENTENCE_END.finditer(text) if mask[m.start()] is None and m.end() < n
    }
    cuts = sorted((set(pauses) | sentence_ends) - {0, n})
    segments: list[_Segment] = []
    start, pause = 0, pauses.get(0, 0)
    for pos in cuts:
        if pos not in pauses and pos - start < min_chars:
            continue
        segments.append(_Segment(start, pos, pause))
        start, pause = pos, pauses.get(pos, 0)
    segments.append(_Segment(start, n, pause))
    if pauses.get(n, 0) and n > 0:
        segments.append(_Segment(n, n, pauses[n]))
    out: list[_Segment] = []
    for seg in segments:  # hard cuts inside very long sentences, at whitespace outside spells
        start, pause = seg.start, seg.pause_ms
        while seg.end - start > max_chars:
            cut = -1
            for k in range(start + max_chars, start + max_chars // 2, -1):
                if text[k - 1].isspace() and mask[k - 1] is None:
                    cut = k
                    break
            if cut < 0:
                break
            out.append(_Segment(start, cut, pause))
            start, pause = cut, 0
        out.append(_Segment(start, seg.end, pause))
    return out


def _rate_at(prosody: Sequence[ProsodySpan], pos: int) -> float:
    for span in prosody:
        if span.start <= pos < span.end:
            return span.rate
    return 1.0


def _escape(ch: str) -> str:
    if ch in _XML_ESCAPES:
        return _XML_ESCAPES[ch]
    if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cs"):
        return " "
    return ch


def _build_ssml(
    chunk: TextChunk,
    seg: _Segment,
    mask: Sequence[SpellSpan | None],
    names: Mapping[str, str],
    space: str | None,
) -> tuple[str, list[int]]:
    """The SSML for one segment and, per SSML character, the chunk offset it speaks (or -1)."""
    text = chunk.text
    parts: list[str] = []
    where: list[int] = []

    def put(s: str, offset: int) -> None:
        parts.append(s)
        where.extend([offset] * len(s))

    put("<speak>", -1)
    rate = 1.0
    i = seg.start
    while i < seg.end:
        r = _rate_at(chunk.prosody, i)
        if r != rate:
            if rate != 1.0:
                put("</prosody>", -1)
            if r != 1.0:
                put(f'<prosody rate="{round(r * 100)}%">', -1)
            rate = r
        span = mask[i]
        if span is not None:
            ch = text[i]
            if ch.isspace():
                if space is not None:
                    put(" ", -1)
                    put(_escape_text(space), i)
                    put(" ", -1)
            elif ch in names:
                put(" ", -1)
                put(_escape_text(names[ch]), i)
                put(" ", -1)
            else:
                put(' <say-as interpret-as="characters">', -1)
                put(_escape(ch), i)
                put("</say-as> ", -1)
            i += 1
            continue
        j = i + 1
        while j < seg.end and mask[j] is None and _rate_at(chunk.prosody, j) == r:
            j += 1
        for k in range(i, j):
            put(_escape(text[k]), k)
        i = j
    if rate != 1.0:
        put("</prosody>", -1)
    put("</speak>", -1)
    return "".join(parts), where


def _escape_text(s: str) -> str:
    return "".join(_escape(c) for c in s)


def _trim_tail(audio: Any) -> Any:
    """``audio`` without the digital silence at its end beyond ``_TAIL_KEEP`` samples."""
    nonzero = np.flatnonzero(audio)
    end = int(nonzero[-1]) + 1 + _TAIL_KEEP if nonzero.size else 0
    return audio[: min(len(audio), end)]


def _loud_end(audio: Any, start: int, end: int) -> int:
    """One past the last sample in ``audio[start:end]`` louder than silence (``start`` if none)."""
    if end <= start:
        return start
    loud = np.flatnonzero(np.abs(audio[start:end].astype(np.int32)) > _SILENCE)
    return start + int(loud[-1]) + 1 if loud.size else start


def _time_words(
    words: Sequence[_Word],
    indices: Sequence[int],
    anchors: Mapping[int, int],
    audio: Any,
) -> list[tuple[int, int]]:
    """(start, end) samples in ``audio`` for the words ``indices`` (in order) of one segment.

    ``anchors`` maps a word index to the sample of its eSpeak word event. A run of words without
    events after an anchored word (or from the segment start) shares the time up to the next
    anchor by character length; the last word of a run ends where its sound ends.
    """
    total = len(audio)
    starts: list[int] = []  # positions in ``indices`` that begin a run
    for pos, w in enumerate(indices):
        if pos == 0 or w in anchors:
            starts.append(pos)
    out: list[tuple[int, int]] = []
    floor = 0
    for r, pos in enumerate(starts):
        stop = starts[r + 1] if r + 1 < len(starts) else len(indices)
        run = indices[pos:stop]
        begin = max(floor, min(anchors.get(run[0], 0), total))
        limit = total
        if stop < len(indices):
            limit = max(begin, min(anchors[indices[stop]], total))
        weights = [max(1, words[w].end - words[w].start) for w in run]
        whole = sum(weights)
        t = begin
        acc = 0
        for k, weight in enumerate(weights):
            acc += weight
            end = limit if k == len(weights) - 1 else begin + (limit - begin) * acc // whole
            if k == len(weights) - 1:
                end = max(t, _loud_end(audio, t, end))
            out.append((t, end))
            t = end
        floor = limit
    return out


# -- the engine -------------------------------------------------------------------------------


@dataclass(slots=True)
class EspeakRun:
    """What one :meth:`EspeakEngine.synthesize` call did (for tests and diagnostics)."""

    text: str
    voice: str = ""
    segments: int = 0
    segments_done: int = 0
    espeak_samples: int = 0  # at 22050 Hz, silence of breaks included
    samples_out: int = 0  # at params.sample_rate, yielded
    synth_s: float = 0.0  # time inside espeak_Synth
    first_audio_s: float | None = None  # from the first step to the first audio piece
    aborted: bool = False  # eSpeak stopped mid-segment by the cancel token
    cancelled: bool = False  # saw the cancel token and stopped
    finished: bool = False
    closed_early: bool = False


@dataclass
class EspeakEngine:
    """The embedded eSpeak NG voice; see the module docstring.

    ``piece_ms``: audio per yielded piece. ``segment_chars`` / ``max_segment_chars``: how long a
    stretch of text one ``espeak_Synth`` call speaks. ``warm``: initialise eSpeak (and run a
    tiny synthesis) in the constructor. ``runs`` records the last ``history`` calls.
    """

    piece_ms: float = 100.0
    segment_chars: int = 200
    max_segment_chars: int = 1000
    quality: str = "HQ"
    warm: bool = True
    history: int = 100
    max_concurrency: int = field(default=1, init=False)
    #: The voices this engine offers (``GET /v1/voices``; what ``voice_id`` may name).
    voices: VoiceCatalogue = field(default=ESPEAK_VOICES, init=False, repr=False)
    runs: deque[EspeakRun] = field(init=False, repr=False)
    _runs_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.piece_ms <= 0:
            raise ValueError("piece_ms must be positive")
        if not 1 <= self.segment_chars <= self.max_segment_chars:
            raise ValueError("need 1 <= segment_chars <= max_segment_chars")
        self.runs = deque(maxlen=self.history)
        if self.warm:
            self.warm_up()

    def warm_up(self) -> None:
        """Initialise eSpeak (once per process) and speak a word, to take first-use costs."""
        with _LOCK:
            espeak = _espeak()
            espeak.set_voice(espeak_voice(None, "en")[0])
            espeak.synth("<speak>ok</speak>", _RATE_NORMAL, False, CancelToken())

    def synthesize(
        self, chunk: TextChunk, params: SynthesisParams, cancel: CancelToken
    ) -> Generator[SynthesisItem, None, None]:
        """Yield PCM16LE pieces at ``params.sample_rate`` and the chunk's word timings."""
        t_first = time.perf_counter()
        sr = params.sample_rate
        text = chunk.text
        names, space = names_for(params.language or "en")
        mask = _spell_mask(text, chunk.spells)
        words, owner = _plan_words(text, mask, names, space)
        segments = _plan_segments(chunk, mask, self.segment_chars, self.max_segment_chars)
        voices = espeak_voice(params.voice_id, params.language)
        speed = params.speed if params.speed > 0 else 1.0
        rate = min(_RATE_MAX, max(_RATE_MIN, round(_RATE_NORMAL * speed)))
        run = EspeakRun(text, segments=len(segments))
        with self._runs_lock:
            self.runs.append(run)
        stream = (
            None
            if sr == ESPEAK_RATE
            else soxr.ResampleStream(ESPEAK_RATE, sr, 1, dtype="int16", quality=self.quality)
        )
        piece_bytes = max(1, round(self.piece_ms * sr / 1000)) * 2
        buf = bytearray()
        pending: deque[WordTimestamp] = deque()
        offset = 0  # eSpeak samples (22050 Hz) of the chunk so far
        emitted = 0  # output samples yielded
        next_word = 0  # first word not yet timed
        try:
            for n_seg, seg in enumerate(segments):
                if cancel.cancelled:
                    run.cancelled = True
                    return
                last = n_seg == len(segments) - 1
                audio = np.zeros(0, dtype=np.int16)
                anchors: dict[int, int] = {}
                seg_words: list[int] = []
                while next_word < len(words) and words[next_word].start < seg.end:
                    seg_words.append(next_word)
                    next_word += 1
                if text[seg.start : seg.end].strip():
                    ssml, where = _build_ssml(chunk, seg, mask, names, space)
                    endpause = text[seg.start : seg.end].rstrip()[-1:] in _TERMINATORS
                    t0 = time.perf_counter()
                    with _LOCK:
                        espeak = _espeak()
                        for name in voices:
                            if espeak.set_voice(name):
                                run.voice = name
                                break
                        sink = espeak.synth(ssml, rate, endpause, cancel)
                    run.synth_s += time.perf_counter() - t0
                    if sink.aborted:
                        run.aborted = run.cancelled = True
                        return
                    audio = np.frombuffer(bytes(sink.audio), dtype=np.int16)
                    if not endpause:  # SSML adds a sentence pause: keep it for sentence ends only
                        audio = _trim_tail(audio)
                    for position, sample in sink.words:
                        w = _word_at(where, owner, position - 1)
                        if w >= 0 and w not in anchors:
                            anchors[w] = sample
                pause = round(seg.pause_ms * ESPEAK_RATE / 1000)
                times = _time_words(words, seg_words, anchors, audio) if seg_words else []
                run.segments_done += 1
                run.espeak_samples += pause + len(audio)
                for w, (start, end) in zip(seg_words, times, strict=True):
                    word = words[w]
                    pending.append(
                        WordTimestamp(
                            word.label,
                            float(round((offset + pause + start) * 1000 / ESPEAK_RATE)),
                            float(round((offset + pause + end) * 1000 / ESPEAK_RATE)),
                            word.start,
                            word.end,
                        )
                    )
                offset += pause + len(audio)
                pcm = np.concatenate((np.zeros(pause, dtype=np.int16), audio)) if pause else audio
                if stream is not None:
                    pcm = stream.resample_chunk(pcm, last=last)
                buf += np.ascontiguousarray(pcm, dtype="<i2").tobytes()
                while len(buf) >= piece_bytes or (last and buf):
                    if cancel.cancelled:
                        run.cancelled = True
                        return
                    piece = bytes(buf[:piece_bytes])
                    del buf[:piece_bytes]
                    emitted += len(piece) // 2
                    run.samples_out = emitted
                    if run.first_audio_s is None:
                        run.first_audio_s = time.perf_counter() - t_first
                    yield piece
                # words whose audio is out (all of them once the chunk is complete)
                done_ms = emitted * 1000 / sr
                while pending and (last or pending[0].end_ms <= done_ms):
                    item = pending.popleft()
                    if item.end_ms > done_ms:  # rounding at the very end of the chunk
                        cap = float(int(done_ms))
                        item = WordTimestamp(
                            item.word,
                            min(item.start_ms, cap),
                            cap,
                            item.char_start,
                            item.char_end,
                        )
                    yield item
            run.finished = True
        finally:
            if not run.finished and not run.cancelled:
                run.closed_early = True


def _word_at(where: Sequence[int], owner: Sequence[int], index: int) -> int:
    """The word an eSpeak text position (0-based SSML index) falls on, or -1."""
    n = len(where)
    while 0 <= index < n and where[index] < 0:  # on markup: the next spoken character
        index += 1
    if not 0 <= index < n:
        return -1
    return owner[where[index]]
