"""ToneEngine: deterministic tones, exact word timings, spells, breaks, speed, cancel."""

from __future__ import annotations

import itertools
import time

import pytest

from kugelwire.protocol._chunker import TextChunk
from kugelwire.protocol._markup import BreakMark, ProsodySpan, SpellSpan
from kugelwire.protocol._messages import WordTimestamp
from kugelwire.protocol._server import SynthesisParams
from kugelwire.synth import SAMPLE_RATES, CancelToken, Engine, ToneEngine


def chunk(
    text: str,
    spells: tuple[SpellSpan, ...] = (),
    breaks: tuple[BreakMark, ...] = (),
    prosody: tuple[ProsodySpan, ...] = (),
) -> TextChunk:
    return TextChunk(text, text, spells, breaks, prosody, "flush")


def params(sample_rate: int = 24000, speed: float = 1.0) -> SynthesisParams:
    return SynthesisParams(1, "kugel-3", "en", speed, sample_rate, "pcm_s16le")


def synth(
    engine: ToneEngine, c: TextChunk, p: SynthesisParams, token: CancelToken | None = None
) -> tuple[list[bytes], list[WordTimestamp]]:
    pieces: list[bytes] = []
    words: list[WordTimestamp] = []
    for item in engine.synthesize(c, p, token or CancelToken()):
        if isinstance(item, bytes):
            pieces.append(item)
        else:
            words.append(item)
    return pieces, words


def test_is_an_engine() -> None:
    assert isinstance(ToneEngine(), Engine)
    assert ToneEngine().max_concurrency >= 1


@pytest.mark.parametrize("sr", SAMPLE_RATES)
def test_word_timings_are_exact_at_every_rate(sr: int) -> None:
    text = "Hello there, general kenobi!"
    engine = ToneEngine(piece_ms=50)
    pieces, words = synth(engine, chunk(text), params(sr))
    assert all(len(p) % 2 == 0 and 0 < len(p) <= round(0.05 * sr) * 2 for p in pieces)
    audio = b"".join(pieces)
    total_ms = len(audio) / 2 * 1000 / sr
    assert [w.word for w in words] == text.split()
    assert all(text[w.char_start : w.char_end] == w.word for w in words)
    assert words[0].start_ms == 0
    assert all(a.end_ms < b.start_ms for a, b in itertools.pairwise(words))
    assert words[-1].end_ms <= total_ms
    for w in words:  # the tone is exactly where the timing says; the gap after it is silent
        start, end = round(w.start_ms * sr / 1000), round(w.end_ms * sr / 1000)
        assert any(audio[2 * start : 2 * end])
        gap_end = round((w.end_ms + engine.gap_ms) * sr / 1000)
        assert not any(audio[2 * end : 2 * gap_end])
    run = engine.runs[-1]
    assert run.finished and run.pieces_yielded == len(pieces) == run.pieces_planned


def test_deterministic_and_different_pitch_per_word() -> None:
    engine = ToneEngine()
    c = chunk("one two three four")
    assert synth(engine, c, params()) == synth(engine, c, params())
    freqs = [s.freq for s in engine.plan(c) if s.freq is not None]
    assert len(freqs) == 4 and all(a != b for a, b in itertools.pairwise(freqs))


def test_spelled_span_one_tone_per_character_with_group_beats() -> None:
    engine = ToneEngine()
    text = "Code A4B9 please"
    spelled = chunk(text, spells=(SpellSpan(5, 9, 2),))
    _, words = synth(engine, spelled, params())
    assert [w.word for w in words] == ["Code", "A", "4", "B", "9", "please"]
    assert [(w.char_start, w.char_end) for w in words[1:5]] == [(5, 6), (6, 7), (7, 8), (8, 9)]
    gaps = [b.start_ms - a.end_ms for a, b in itertools.pairwise(words)]
    assert gaps[2] == pytest.approx(engine.gap_ms + engine.group_beat_ms)  # after "A4"
    assert gaps[1] == pytest.approx(engine.gap_ms)


def test_break_is_silence_of_its_length() -> None:
    engine = ToneEngine()
    plain, pw = synth(engine, chunk("before after"), params(16000))
    broken, bw = synth(engine, chunk("before after", breaks=(BreakMark(7, 500),)), params(16000))
    assert len(b"".join(broken)) - len(b"".join(plain)) == 500 * 16 * 2
    assert bw[1].start_ms - pw[1].start_ms == pytest.approx(500)


def test_speed_and_prosody_scale_durations() -> None:
    engine = ToneEngine()
    c = chunk("a few words to speak here")
    normal = len(b"".join(synth(engine, c, params())[0]))
    fast = len(b"".join(synth(engine, c, params(speed=1.2))[0]))
    assert fast / normal == pytest.approx(1 / 1.2, rel=0.01)
    slow = chunk("a few words to speak here", prosody=(ProsodySpan(0, 25, 0.8),))
    assert len(b"".join(synth(engine, slow, params())[0])) / normal == pytest.approx(1.25, rel=0.01)


def test_cancel_stops_between_pieces() -> None:
    engine = ToneEngine(piece_ms=20)
    token = CancelToken()
    gen = engine.synthesize(chunk("many words " * 20), params(), token)
    assert isinstance(next(gen), bytes)
    token.cancel()
    rest = list(gen)
    assert all(isinstance(x, WordTimestamp) for x in rest)
    run = engine.runs[-1]
    assert run.cancelled and not run.finished and run.pieces_yielded == 1


def test_closing_early_is_recorded() -> None:
    engine = ToneEngine(piece_ms=20)
    gen = engine.synthesize(chunk("words " * 20), params(), CancelToken())
    next(gen)
    gen.close()
    assert engine.runs[-1].closed_early


def test_fast() -> None:
    engine = ToneEngine()
    text = " ".join(f"word{i}" for i in range(300))  # ~1 min of audio
    t0 = time.perf_counter()
    pieces, _ = synth(engine, chunk(text), params(44100))
    assert len(b"".join(pieces)) / 2 / 44100 > 60
    assert time.perf_counter() - t0 < 1.0
