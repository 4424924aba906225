"""``ToneEngine``: a deterministic, dependency-free test engine (one tone per word).

Every word of a chunk becomes a sine tone (consecutive words get different pitches) followed by
a short silence; spelled spans get one tone per character (whitespace included) with an extra
beat every ``group`` characters; breaks become silence of their length; ``params.speed`` (and a
prosody rate) divides every duration. Word timings are exact: they are computed from the same
sample counts that are emitted. Audio is produced by repeating one precomputed period, so the
engine is fast enough to stream hours of audio in tests.

Voices (:data:`TONE_VOICES`, the engine's ``voices`` catalogue) differ in base pitch: every
pitch of voice 1 is multiplied by the voice's factor, so two voices sound different while their
timings (and word timestamps) are identical. An id outside the catalogue (a lenient server
passes those through) speaks as voice 1.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from ..protocol.config import Voice, VoiceCatalogue
from ..protocol.messages import WordTimestamp
from ..protocol.sessions import SynthesisParams
from ..protocol.text import TextChunk
from ._base import CancelToken, SynthesisItem

__all__ = ["TONE_VOICES", "ToneEngine", "ToneRun"]

_WORD = re.compile(r"\S+")
#: Pitches (Hz) cycled through word by word: a pentatonic scale over two octaves.
PITCHES = (220.0, 247.5, 278.4, 330.0, 371.3, 440.0, 495.0, 556.9, 660.0, 742.5)
_AMPLITUDE = 0.3


def _tone_voice(
    id: int, name: str, factor: float, handle: str, sex: str, description: str
) -> Voice:
    return Voice(
        id,
        name,
        "en",
        engine_voice=f"tone x{factor:g}",
        handle=handle,
        description=description,
        sex=sex,
        supported_languages=("en", "de", "fr", "es", "it"),
        sample_text="Hello, this is a tone voice.",
    )


#: The tone engine's voices (id -> base-pitch factor in ``engine_voice``). 123, 280, 456, 1071
#: and 1072 are the ids the service's and the official SDKs' documentation examples use, so
#: copied examples run against a local server.
TONE_VOICES = VoiceCatalogue.of(
    [
        _tone_voice(1, "Tone Low", 1.0, "tone-low", "male", "Pentatonic tones from 220 Hz"),
        _tone_voice(2, "Tone High", 1.5, "tone-high", "female", "A fifth above Tone Low"),
        _tone_voice(3, "Tone Bright", 2.0, "tone-bright", "neutral", "An octave above Tone Low"),
        _tone_voice(123, "Tone Example A", 0.9, "tone-example-a", "male", "Just below Tone Low"),
        _tone_voice(280, "Tone Example B", 1.1, "tone-example-b", "male", "Just above Tone Low"),
        _tone_voice(456, "Tone Example C", 1.35, "tone-example-c", "female", "A fourth up"),
        _tone_voice(1071, "Tone Narrator", 0.8, "tone-narrator", "male", "Below Tone Low"),
        _tone_voice(1072, "Tone Character", 1.25, "tone-character", "female", "A third up"),
    ]
)
_FACTORS = {v.id: float(v.engine_voice.split("x", 1)[1]) for v in TONE_VOICES}


def pitch_factor(voice_id: int | str | None) -> float:
    """The base-pitch factor of a voice id (1.0 for ids outside the catalogue)."""
    voice = TONE_VOICES.find(voice_id)
    return _FACTORS[voice.id] if voice is not None else 1.0


@lru_cache(maxsize=256)
def _period(freq: float, sample_rate: int) -> bytes:
    """One period of a sine at ``freq`` (rounded to a whole number of samples), PCM16LE."""
    n = max(2, round(sample_rate / freq))
    scale = _AMPLITUDE * 32767
    return b"".join(
        round(scale * math.sin(2 * math.pi * i / n)).to_bytes(2, "little", signed=True)
        for i in range(n)
    )


def _tone(freq: float, samples: int, sample_rate: int) -> bytes:
    period = _period(freq, sample_rate)
    reps = -(-samples * 2 // len(period))
    return (period * reps)[: samples * 2]


@dataclass(slots=True)
class ToneRun:
    """What one :meth:`ToneEngine.synthesize` call did (for tests)."""

    text: str
    pieces_planned: int = 0
    pieces_yielded: int = 0
    samples_yielded: int = 0
    finished: bool = False  # ran to the end
    cancelled: bool = False  # saw its cancel token set and stopped
    closed_early: bool = False  # the generator was closed before it finished


@dataclass(frozen=True, slots=True)
class _Segment:
    ms: float
    freq: float | None = None  # None: silence
    word: WordTimestamp | None = None  # filled in with exact times when emitted


@dataclass
class ToneEngine:
    """Deterministic pure-Python engine; see the module docstring.

    ``piece_ms`` is the audio per yielded piece; ``realtime_factor`` > 0 makes generation take
    that fraction of real time (sleeping between pieces, woken by cancel), to let tests barge in
    mid-chunk. ``runs`` records the last ``history`` calls.
    """

    piece_ms: float = 100.0
    realtime_factor: float = 0.0
    word_ms_per_char: float = 40.0
    word_ms_min: float = 120.0
    word_ms_max: float = 600.0
    gap_ms: float = 40.0
    spell_ms: float = 150.0
    group_beat_ms: float = 120.0
    max_concurrency: int = 4
    history: int = 1000
    #: The voices this engine offers (``GET /v1/voices``; what ``voice_id`` may name).
    voices: VoiceCatalogue = field(default=TONE_VOICES, repr=False)
    runs: deque[ToneRun] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.runs = deque(maxlen=self.history)

    @property
    def inline(self) -> bool:
        """Steps are quick and never block unless generation is paced to real time (see
        :class:`~kugelwire.synth.Engine`): the asyncio server advances them on its loop."""
        return self.realtime_factor <= 0

    # -- planning ---------------------------------------------------------------------------
    def plan(self, chunk: TextChunk, speed: float = 1.0) -> list[_Segment]:
        """The chunk's segments in order (durations already scaled by speed and prosody)."""
        text = chunk.text
        items: list[tuple[int, int, _Segment]] = []  # (position, order, segment)
        spans = sorted((s.start, s.end, s.group) for s in chunk.spells)
        rates = [(p.start, p.end, p.rate) for p in chunk.prosody]

        def rate_at(pos: int) -> float:
            for start, end, rate in rates:
                if start <= pos < end:
                    return rate
            return 1.0

        def scaled(ms: float, pos: int) -> float:
            return ms / (max(speed, 0.01) * max(rate_at(pos), 0.01))

        def in_spell(pos: int) -> bool:
            return any(start <= pos < end for start, end, _ in spans)

        n = 0
        for m in _WORD.finditer(text):
            # split a word around spelled spans: the unspelled parts stay words
            for wm in re.finditer(r"[^\x00]+", _mask(text, m.start(), m.end(), spans)):
                start, end = m.start() + wm.start(), m.start() + wm.end()
                if in_spell(start):
                    continue
                ms = self.word_ms_per_char * (end - start)
                ms = min(self.word_ms_max, max(self.word_ms_min, ms))
                word = WordTimestamp(text[start:end], 0.0, 0.0, start, end)
                items.append((start, 1, _Segment(scaled(ms, start), _pitch(n), word)))
                items.append((start, 2, _Segment(scaled(self.gap_ms, start))))
                n += 1
        for start, end, group in spans:
            for i, pos in enumerate(range(start, end)):
                word = WordTimestamp(text[pos], 0.0, 0.0, pos, pos + 1)
                items.append((pos, 1, _Segment(scaled(self.spell_ms, pos), _pitch(n), word)))
                beat = bool(group) and (i + 1) % max(group or 1, 1) == 0 and pos + 1 < end
                gap = self.gap_ms + (self.group_beat_ms if beat else 0.0)
                items.append((pos, 2, _Segment(scaled(gap, pos))))
                n += 1
        for mark in chunk.breaks:
            items.append((mark.offset, 0, _Segment(float(mark.ms))))
        items.sort(key=lambda t: (t[0], t[1]))
        return [seg for _, _, seg in items]

    # -- the engine interface ---------------------------------------------------------------
    def synthesize(
        self, chunk: TextChunk, params: SynthesisParams, cancel: CancelToken
    ) -> Iterator[SynthesisItem]:
        """Yield PCM16LE pieces of at most ``piece_ms`` and each word's exact timing."""
        sr = params.sample_rate
        factor = pitch_factor(params.voice_id)
        segments = self.plan(chunk, params.speed)
        piece_bytes = max(1, round(self.piece_ms * sr / 1000)) * 2
        total = sum(round(seg.ms * sr / 1000) for seg in segments)
        run = ToneRun(chunk.text, pieces_planned=-(-total * 2 // piece_bytes))
        with self._lock:
            self.runs.append(run)
        delay = self.piece_ms / 1000 * self.realtime_factor
        buf = bytearray()
        pos = 0  # samples emitted or buffered
        words: list[WordTimestamp] = []
        try:
            for seg in segments:
                samples = round(seg.ms * sr / 1000)
                start = pos
                if seg.freq is None:
                    buf += bytes(samples * 2)
                else:
                    buf += _tone(seg.freq * factor, samples, sr)
                pos += samples
                if seg.word is not None:
                    w = seg.word
                    words.append(
                        WordTimestamp(
                            w.word, start * 1000 / sr, pos * 1000 / sr, w.char_start, w.char_end
                        )
                    )
                while len(buf) >= piece_bytes:
                    if cancel.cancelled or (delay and cancel.wait(delay)):
                        run.cancelled = True
                        return
                    piece = bytes(buf[:piece_bytes])
                    del buf[:piece_bytes]
                    run.pieces_yielded += 1
                    run.samples_yielded += len(piece) // 2
                    yield piece
                    yield from _ready(words, (pos - len(buf) // 2) * 1000 / sr)
            if buf:
                if cancel.cancelled or (delay and cancel.wait(delay)):
                    run.cancelled = True
                    return
                run.pieces_yielded += 1
                run.samples_yielded += len(buf) // 2
                yield bytes(buf)
            yield from words
            words.clear()
            run.finished = True
        finally:
            if not run.finished and not run.cancelled:
                run.closed_early = True


def _ready(words: list[WordTimestamp], emitted_ms: float) -> Iterator[WordTimestamp]:
    """Pop the words whose audio has been emitted completely."""
    while words and words[0].end_ms <= emitted_ms + 1e-9:
        yield words.pop(0)


def _pitch(n: int) -> float:
    return PITCHES[(n * 3) % len(PITCHES)]


def _mask(text: str, start: int, end: int, spans: list[tuple[int, int, int | None]]) -> str:
    """``text[start:end]`` with characters inside spelled spans replaced by NUL."""
    chars = list(text[start:end])
    for s, e, _ in spans:
        for i in range(max(s, start), min(e, end)):
            chars[i - start] = "\x00"
    return "".join(chars)
