"""Inline markup in streamed text: <spell>, <break>, <prosody> (DECISIONS rule 20, REFERENCE §6)."""

from __future__ import annotations

import pytest

from kugelwire.protocol._chunker import Chunker, TextChunk
from kugelwire.protocol._markup import (
    MAX_TAG_LENGTH,
    BreakMark,
    MarkupError,
    ProsodySpan,
    SpellSpan,
    break_ms,
    prosody_rate,
    scan,
)


def run(*feeds: str, flush: bool = True) -> list[TextChunk]:
    """Feed without time passing (one chunk per flush unless a boundary cuts)."""
    c = Chunker(chunk_length_schedule=[10_000])
    out: list[TextChunk] = []
    for f in feeds:
        out += c.feed(f, 0.0)
    if flush:
        out += c.flush(0.0)
    return out


def one(*feeds: str) -> TextChunk:
    chunks = run(*feeds)
    assert len(chunks) == 1
    return chunks[0]


# -- <spell> ---------------------------------------------------------------------------------------


def test_rule20_spell_span_offsets_and_source() -> None:
    ch = one("My code is <spell>AB12</spell> thanks")
    assert ch.text == "My code is AB12 thanks"
    assert ch.source == "My code is <spell>AB12</spell> thanks"
    assert ch.spells == (SpellSpan(11, 15, None),)


def test_rule20_spell_tag_split_across_frames_is_held_until_complete() -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed("Code <sp", 0.0) == []
    assert c.buffered_chars == len("Code <sp")  # held incomplete tag counts
    assert c.feed("ell>AB", 0.0) == []
    assert c.feed("C</spell>", 0.0) == []
    (ch,) = c.flush(0.0)
    assert ch.text == "Code ABC"
    assert ch.spells == (SpellSpan(5, 8, None),)
    assert ch.source == "Code <spell>ABC</spell>"


def test_rule20_closing_tag_split_across_frames() -> None:
    ch = one("<spell>A.B</sp", "el", "l> end")
    assert ch.text == "A.B end"
    assert ch.spells == (SpellSpan(0, 3, None),)


@pytest.mark.parametrize(
    ("tag", "group"),
    [
        ('<spell group="2">', 2),
        ("<spell group='3'>", 3),
        ('<spell  group = "4" >', 4),
        ('<spell group="0">', None),
        ('<spell group="-2">', None),
        ('<spell group="x">', None),
        ('<spell lang="de" group="2">', 2),  # unknown attribute ignored
        ('<spell foo="bar">', None),
        ("<SPELL>", None),
    ],
)
def test_rule20_spell_group_attribute(tag: str, group: int | None) -> None:
    ch = one(f"{tag}A4B9XZ</spell>")
    assert ch.text == "A4B9XZ"
    assert ch.spells == (SpellSpan(0, 6, group),)


def test_rule20_dot_inside_spell_is_not_a_boundary() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed("Mail <spell>kajo@kugelaudio.com. Next</spell> ok", 0.0)
    assert out == []
    assert c.next_deadline() == 0.5  # only the stale fallback, no confirm timer
    (ch,) = c.flush(0.0)
    assert ch.spells == (SpellSpan(5, 5 + len("kajo@kugelaudio.com. Next"), None),)


def test_rule20_nested_spell_open_is_text_inside_the_span() -> None:
    ch = one("<spell>A<spell>B</spell>C")
    assert ch.text == "A<spell>BC"
    assert ch.spells == (SpellSpan(0, 9, None),)


def test_rule20_stray_spell_close_is_dropped() -> None:
    ch = one("abc</spell> def")
    assert ch.text == "abc def"
    assert ch.source == "abc</spell> def"
    assert ch.spells == ()


def test_rule20_unterminated_spell_auto_closed_at_flush() -> None:
    c = Chunker()
    assert c.feed("Code <spell>AB", 0.0) == []
    (ch,) = c.flush(0.2)
    assert ch.reason == "flush"
    assert ch.source == "Code <spell>AB</spell>"
    assert ch.text == "Code AB"
    assert ch.spells == (SpellSpan(5, 7, None),)


def test_rule20_other_tags_inside_spell_are_spelled_text() -> None:
    ch = one('<spell>a<break/>b<prosody rate="x">c</spell>')
    assert ch.text == 'a<break/>b<prosody rate="x">c'
    assert ch.breaks == () and ch.prosody == ()


def test_rule20_self_closing_spell_spells_nothing() -> None:
    ch = one("a <spell/> b")
    assert ch.text == "a  b" and ch.spells == ()


# -- <break> (REFERENCE §6.5) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "ms"),
    [
        ("", 200),
        (' time="100ms"', 200),
        (' time="299ms"', 200),
        (' time="300ms"', 400),
        (" time='350ms'", 400),
        (' time="449ms"', 400),
        (' time="450ms"', 500),
        (' time="460ms"', 500),
        (' time="1.5s"', 500),
        (' time="0.3s"', 400),
        (' time="2S"', 500),
        (' time="0ms"', 200),
        (' time="soon"', 200),
        (' strength="none"', 0),
        (' strength="x-weak"', 200),
        (' strength="weak"', 200),
        (' strength="medium"', 200),
        (' strength="strong"', 500),
        (' strength="x-strong"', 500),
        (' strength="bogus"', 200),
        (' time="450ms" strength="none"', 500),  # time wins
    ],
)
def test_break_snapping_reference_6_5(attrs: str, ms: int) -> None:
    assert break_ms(attrs) == ms


@pytest.mark.parametrize(
    "tag",
    ['<break time="1s"/>', '<break time="1s" />', "<break time='1s'></break>", '<break time="1s">'],
)
def test_rule20_break_forms_give_a_mark_at_its_position(tag: str) -> None:
    ch = one(f"Wait{tag} now")
    assert ch.text == "Wait now"
    assert ch.breaks == (BreakMark(4, 500),)
    assert ch.source == f"Wait{tag} now"


def test_bare_break_is_200ms() -> None:
    assert one("a<break/>b").breaks == (BreakMark(1, 200),)


def test_break_tag_split_across_frames() -> None:
    assert one("a<br", "eak time=", '"400ms"/', ">b").breaks == (BreakMark(1, 400),)


# -- <prosody> (REFERENCE §6.4) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "value"),
    [("slow", 0.8), ("medium", 1.0), ("fast", 1.2), ("FAST", 1.2), ("0.9", 0.9), ("2", 1.2),
     ("0.1", 0.8), ("1", 1.0)],
)
def test_prosody_rates_and_clamping(rate: str, value: float) -> None:
    assert prosody_rate(f' rate="{rate}"') == pytest.approx(value)
    ch = one(f'a <prosody rate="{rate}">quick words</prosody> b')
    assert ch.text == "a quick words b"
    (span,) = ch.prosody
    assert (span.start, span.end) == (2, 13)
    assert span.rate == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        '<prosody rate="slow">never closed',
        "stray </prosody> close",
        '<prosody rate="slow">a <prosody rate="fast">b</prosody></prosody>',
        '<prosody rate="x-slow">a</prosody>',
        '<prosody rate="nan">a</prosody>',
        '<prosody rate="slow" pitch="high">a</prosody>',
        '<prosody volume="loud">a</prosody>',
        "<prosody>a</prosody>",
        '<prosody rate="slow">a</pros',  # the close tag is incomplete at the end of the message
    ],
)
def test_rule20_bad_prosody_raises_and_nothing_is_accepted(text: str) -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed("Kept. <sp", 0.0) == []
    before = c.buffered_chars
    with pytest.raises(MarkupError) as info:
        c.feed(text, 0.0)
    assert str(info.value)
    assert c.buffered_chars == before
    chunks = c.feed("ell>X</spell>", 0.0) + c.flush(0.0)
    assert [ch.source for ch in chunks] == ["Kept.", " <spell>X</spell>"]


def test_rule20_prosody_must_open_and_close_within_one_message() -> None:
    c = Chunker()
    with pytest.raises(MarkupError):
        c.feed('<prosody rate="slow">first half', 0.0)
    assert c.buffered_chars == 0
    c.feed('<prosody rate="slow">whole</prosody>', 0.0)
    (ch,) = c.flush(0.0)
    assert ch.prosody == (ProsodySpan(0, 5, 0.8),)


def test_prosody_open_tag_completed_by_the_next_message_is_accepted() -> None:
    ch = one('x <prosody rate="fa', 'st">y</prosody>')
    assert ch.prosody == (ProsodySpan(2, 3, 1.2),)


def test_prosody_span_split_by_a_sentence_cut() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed('<prosody rate="slow">One. Two.</prosody> Three', 0.0)
    out += c.flush(0.0)
    assert [ch.text for ch in out] == ["One.", " Two.", " Three"]
    assert out[0].prosody == (ProsodySpan(0, 4, 0.8),)
    assert out[1].prosody == (ProsodySpan(0, 5, 0.8),)
    assert out[2].prosody == ()


# -- other tags and literal "<" ------------------------------------------------------------------


def test_other_tags_are_stripped_inner_text_kept() -> None:
    ch = one('<speak><emphasis level="strong">Big</emphasis> <say-as x="y">news</say-as></speak>')
    assert ch.text == "Big news"


@pytest.mark.parametrize("text", ["a < b", "<3 you", "x<>y", "1 <= 2", "a <. b", "<<b>>"])
def test_literal_less_than(text: str) -> None:
    expected = text.replace("<b>", "")
    assert one(text).text == expected


def test_tag_candidate_longer_than_limit_is_literal() -> None:
    long = "<b " + "x" * MAX_TAG_LENGTH
    c = Chunker()
    c.feed(long[:100], 0.0)
    assert c.buffered_chars == 100  # held as a possible tag
    c.feed(long[100:] + "> tail", 0.0)
    (ch,) = c.flush(0.0)
    assert ch.text == long + "> tail"


def test_tag_of_exactly_the_limit_is_markup() -> None:
    tag = "<b " + "x" * (MAX_TAG_LENGTH - 4) + ">"
    assert len(tag) == MAX_TAG_LENGTH
    assert one("a" + tag + "b").text == "ab"


def test_incomplete_tag_at_flush_is_text() -> None:
    assert one("see <b and more").text == "see <b and more"


def test_scan_is_pure_and_reports_tail() -> None:
    atoms, tail, in_spell = scan("ab<spell>c<", False)
    assert tail == "<" and in_spell
    assert [a[1] for a in atoms] == ["ab", "<spell>", "c"]
