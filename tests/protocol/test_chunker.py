"""Server-side chunker: DECISIONS rules 1-4 and 20, REFERENCE §5."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kugelwire.protocol._chunker import Chunker, TextChunk


def texts(chunks: list[TextChunk]) -> list[str]:
    return [c.text for c in chunks]


def drive(c: Chunker, feeds: list[tuple[float, str]], end: float) -> list[TextChunk]:
    """A sans-IO driver: fire every deadline on time, feed at the given times, run to ``end``."""
    out: list[TextChunk] = []
    for at, text in [*feeds, (end, "")]:
        while (d := c.next_deadline()) is not None and d <= at:
            out += c.handle_timeout(d)
        if text:
            out += c.feed(text, at)
    return out


# -- rule 4: boundaries ---------------------------------------------------------------------------


def test_rule4_final_period_confirmed_by_quiet_after_confirm_delay() -> None:
    c = Chunker()
    assert c.feed("Hello world.", 10.0) == []
    assert c.next_deadline() == pytest.approx(10.05)
    assert c.handle_timeout(10.04) == []
    (ch,) = c.handle_timeout(10.05)
    assert (ch.text, ch.reason) == ("Hello world.", "boundary")
    assert c.next_deadline() is None
    assert c.flush(11.0) == []


def test_rule4_confirm_delay_is_configurable() -> None:
    c = Chunker(confirm_delay_s=0.01)
    c.feed("Hello world.", 0.0)
    assert c.next_deadline() == pytest.approx(0.01)


@pytest.mark.parametrize("mark", ["!", "?", "…", "?!", '!"', "?)"])
def test_rule4_strong_terminator_cuts_at_word_end_without_waiting(mark: str) -> None:
    c = Chunker()
    (ch,) = c.feed(f"Is it you{mark} Yes", 0.0)
    assert ch.text == f"Is it you{mark}"
    assert ch.reason == "boundary"


def test_rule4_strong_terminator_at_end_of_input_is_final_after_confirm_delay() -> None:
    c = Chunker()
    assert c.feed("Is it you?", 0.0) == []
    assert c.next_deadline() == pytest.approx(0.05)
    assert texts(c.handle_timeout(0.05)) == ["Is it you?"]


def test_rule4_period_and_question_mark_have_the_same_latency() -> None:
    """ENG-686: first audio after a final "." within 150 ms of a final "?"."""
    for mark in ".?!":
        c = Chunker()
        out = drive(c, [(0.0, "This is the end"), (0.01, mark)], end=1.0)
        assert texts(out) == [f"This is the end{mark}"]
    c = Chunker()
    c.feed("This is the end.", 0.0)
    assert c.next_deadline() is not None and c.next_deadline() <= 0.05  # type: ignore[operator]


def test_rule4_period_confirmed_by_next_fragment() -> None:
    c = Chunker()
    assert c.feed("Hello world.", 0.0) == []
    assert c.feed(" ", 0.0) == []
    assert texts(c.feed("How", 0.01)) == ["Hello world."]
    assert c.buffered_chars == len(" How")


@pytest.mark.parametrize(
    "text",
    [
        "Ask Dr. Smith about it",
        "Ask DR. Smith about it",
        "Ask dr. Smith about it",
        "Hello Mr. Jones and Mrs. Jones and Ms. Lee",
        "Prof. Xavier and St. Louis and Jr. High and Sr. Dev",
        "Cats vs. Dogs today",
        "We need e.g. This one",
        "We need i.e. That one",
        "Apples, pears etc. Also more",
        "Written by J. Doe himself",
        "It costs 3.5 dollars",
        "Visit example.com today",
        "Wait... what happened",
        "It ended. and then lowercase",
    ],
)
def test_rule4_period_that_does_not_cut(text: str) -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed(text + " now", 0.0) == []
    assert texts(c.flush(0.0)) == [text + " now"]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("It ended. Then more", "It ended."),
        ("It ended. 42 more", "It ended."),
        ('It ended. "Quoted" more', "It ended."),
        ("It ended. (Aside) more", "It ended."),
        ('He said "stop." Then more', 'He said "stop."'),
        ("It ended.  \t Then more", "It ended."),
        ("Wait... What now", "Wait..."),
        ("So was I. Then more", "So was I."),
        ("Ende. Über mehr", "Ende."),
        ("It ended. 日本 more", "It ended."),
    ],
)
def test_rule4_period_cuts_before_uppercase_digit_quote_bracket(text: str, first: str) -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed(text, 0.0)
    assert texts(out) == [first]


def test_rule4_dr_smith_split_over_frames_does_not_cut() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = drive(c, [(0.0, "Ask D"), (0.001, "r."), (0.002, " Sm"), (0.003, "ith now")], end=0.1)
    assert out == []


def test_rule4_cjk_terminators_need_no_space() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed("你好。世界！真的？好", 0.0)
    assert texts(out) == ["你好。", "世界！", "真的？"]
    out = c.feed("」", 0.0)
    assert out == []


def test_rule4_cjk_closing_bracket_stays_with_sentence() -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert texts(c.feed("「你好。」他说", 0.0)) == ["「你好。」"]


def test_rule4_newline_cuts_right_after_itself() -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert texts(c.feed("first line\nsecond", 0.0)) == ["first line\n"]
    assert texts(c.feed(" line.\n\nthird", 0.0)) == ["second line.\n"]
    assert texts(c.flush(0.0)) == ["\nthird"]


def test_rule4_bang_inside_word_does_not_cut() -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed("Yahoo!Mail is what?really", 0.0) == []


# -- rule 1: schedule -----------------------------------------------------------------------------


def test_rule1_schedule_is_a_minimum_before_a_boundary_may_cut() -> None:
    c = Chunker(chunk_length_schedule=[10, 20])
    out = c.feed("Hi. Ok. This is long enough. Short. Next one is longer too. End", 0.0)
    assert texts(out) == ["Hi. Ok. This is long enough.", " Short. Next one is longer too."]
    assert c.chunks_emitted == 2


def test_rule1_schedule_is_not_a_forced_cut() -> None:
    c = Chunker(chunk_length_schedule=[5])
    assert c.feed("a long run of words without any sentence end at all", 0.0) == []


def test_rule1_default_schedule_second_chunk_needs_80() -> None:
    c = Chunker()
    out = c.feed("Hello there. Short one. " + "x" * 70 + " words. More", 0.0)
    assert texts(out) == ["Hello there.", " Short one. " + "x" * 70 + " words."]


def test_rule1_last_schedule_value_repeats() -> None:
    c = Chunker(chunk_length_schedule=[1, 5])
    out = c.feed("Aa. Bb. Cc. Ddd. Eeee. F", 0.0)
    assert texts(out) == ["Aa.", " Bb. Cc.", " Ddd.", " Eeee."]


def test_rule1_auto_mode_cuts_first_chunk_at_first_boundary() -> None:
    c = Chunker(chunk_length_schedule=[50, 3], auto_mode=True)
    out = c.feed("Hi. Yo. Again. More", 0.0)
    assert texts(out) == ["Hi.", " Yo.", " Again."]


@pytest.mark.parametrize("bad", [[], [0], [5, -1], [1.5], [True], "5", None])
def test_rule1_schedule_validation(bad: object) -> None:
    with pytest.raises(ValueError):
        Chunker(chunk_length_schedule=bad)  # type: ignore[arg-type]
    if bad is None:
        return  # reconfigure(None) keeps the current schedule
    with pytest.raises(ValueError):
        Chunker().reconfigure(chunk_length_schedule=bad)  # type: ignore[arg-type]


def test_reconfigure_applies_to_next_chunks() -> None:
    c = Chunker(chunk_length_schedule=[100])
    assert c.feed("Hi. There.", 0.0) == []
    c.reconfigure(chunk_length_schedule=[1])
    assert texts(c.feed(" Yes. No", 0.0)) == ["Hi. There.", " Yes."]
    c.reconfigure(max_buffer_length=5, flush_timeout_ms=100, auto_mode=True)
    assert texts(c.feed(" abc def", 0.0)) == [" No ", "abc "]
    assert c.next_deadline() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        c.reconfigure(max_buffer_length=0)
    with pytest.raises(ValueError):
        c.reconfigure(flush_timeout_ms=-1)


# -- rule 3: stale buffer -------------------------------------------------------------------------


def test_rule3_stale_buffer_emitted_after_flush_timeout_measured_from_last_feed() -> None:
    c = Chunker(flush_timeout_ms=500)
    c.feed("Let me check", 0.0)
    c.feed(" that for you", 0.3)
    assert c.next_deadline() == pytest.approx(0.8)
    assert c.handle_timeout(0.79) == []
    (ch,) = c.handle_timeout(0.8)
    assert (ch.text, ch.reason) == ("Let me check that for you", "stale")
    assert c.next_deadline() is None
    assert c.buffered_chars == 0


def test_rule3_stale_does_not_end_anything_and_respects_later_schedule() -> None:
    c = Chunker(chunk_length_schedule=[1, 10])
    out = drive(c, [(0.0, "Hmm"), (1.0, "Ok. Long enough now. X")], end=1.2)
    assert [(ch.text, ch.reason) for ch in out] == [
        ("Hmm", "stale"),
        ("Ok. Long enough now.", "boundary"),
    ]


def test_rule3_stale_holds_open_spell_and_incomplete_tag() -> None:
    c = Chunker()
    c.feed("Your code is <spell>AB", 0.0)
    (ch,) = c.handle_timeout(0.5)
    assert (ch.text, ch.source, ch.reason) == ("Your code is ", "Your code is ", "stale")
    assert c.next_deadline() is None  # nothing else can go stale
    c.feed("C</spell> and <bre", 1.0)
    (ch,) = c.handle_timeout(1.5)
    assert ch.source == "<spell>ABC</spell> and "
    assert ch.spells[0].end == 3
    assert c.buffered_chars == len("<bre")
    (ch,) = c.flush(1.6)
    assert (ch.text, ch.reason) == ("<bre", "flush")


def test_rule3_whitespace_only_is_never_stale() -> None:
    c = Chunker()
    c.feed(" ", 0.0)
    assert c.next_deadline() is None
    assert c.handle_timeout(10.0) == []
    assert not c.has_content
    assert c.buffered_chars == 1
    c.feed("Hi", 11.0)
    assert c.has_content
    (ch,) = c.handle_timeout(11.5)
    assert ch.source == " Hi"


def test_rule3_overdue_timers_run_before_new_text() -> None:
    c = Chunker()
    c.feed("Waiting", 0.0)
    out = c.feed(" more", 2.0)  # the driver missed the deadline
    assert texts(out) == ["Waiting"]


def test_rule3_zero_timeout_fires_at_the_feed_time_via_handle_timeout() -> None:
    c = Chunker(flush_timeout_ms=0)
    assert c.feed("a", 1.0) == []
    assert c.feed("b", 1.0) == []  # same instant: not yet overdue
    assert texts(c.handle_timeout(1.0)) == ["ab"]


# -- rule 2: max buffer ---------------------------------------------------------------------------


def test_rule2_max_buffer_cuts_at_last_whitespace() -> None:
    c = Chunker(max_buffer_length=20)
    out = c.feed("one two three four five six seven", 0.0)
    assert [(ch.text, ch.reason) for ch in out] == [("one two three four ", "max_buffer")]
    assert all(len(ch.source) <= 20 for ch in out)


def test_rule2_max_buffer_without_whitespace_cuts_at_limit() -> None:
    c = Chunker(max_buffer_length=10)
    out = c.feed("abcdefghijklmnopqrstuvwxyz", 0.0)
    assert texts(out) == ["abcdefghij", "klmnopqrst"]


def test_rule2_max_buffer_never_cuts_inside_tag() -> None:
    c = Chunker(max_buffer_length=10)
    out = c.feed('abcdefgh<break time="1s"/>ijkl', 0.0)
    assert out[0].source == "abcdefgh"


def test_rule2_max_buffer_never_cuts_inside_spell() -> None:
    c = Chunker(max_buffer_length=10)
    out = c.feed("ab <spell>" + "X" * 30 + "</spell>cd", 0.0)
    assert [ch.source for ch in out] == ["ab ", "<spell>" + "X" * 30 + "</spell>"]
    assert out[1].spells[0].end == 30


def test_rule2_max_buffer_counts_tokens_streamed_in() -> None:
    c = Chunker(max_buffer_length=50)
    out: list[TextChunk] = []
    for _ in range(40):
        out += c.feed("word ", 0.0)
    assert out and all(ch.reason == "max_buffer" and len(ch.source) <= 50 for ch in out)
    assert "".join(ch.source for ch in out + c.flush(0.0)) == "word " * 40


# -- flush, clear, whitespace ----------------------------------------------------------------------


def test_flush_emits_rest_and_splits_at_boundaries_first() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed("One. Two. Three", 0.0) + c.flush(0.0)
    assert [(ch.text, ch.reason) for ch in out] == [
        ("One.", "boundary"),
        (" Two.", "boundary"),
        (" Three", "flush"),
    ]


def test_flush_of_empty_buffer_returns_nothing_and_chunker_is_reusable() -> None:
    c = Chunker()
    assert c.flush(0.0) == []
    c.feed("Again", 1.0)
    assert texts(c.flush(1.0)) == ["Again"]
    assert c.chunks_emitted == 1


def test_flush_keeps_trailing_whitespace_and_lone_markup() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed("Done! <break/>", 0.0) + c.flush(0.0)
    assert [ch.source for ch in out] == ["Done!", " <break/>"]
    assert out[1].text == " " and out[1].breaks[0].offset == 1


def test_whitespace_between_sentences_starts_next_chunk() -> None:
    c = Chunker(chunk_length_schedule=[1])
    out = c.feed("A!\n\n\nB! ", 0.0) + c.flush(0.0)
    assert [ch.source for ch in out] == ["A!\n", "\n\nB!", " "]
    assert all(ch.text.strip() for ch in out if ch.reason != "flush")


def test_clear_drops_everything() -> None:
    c = Chunker()
    c.feed("Some text <spell>AB", 0.0)
    c.clear()
    assert c.buffered_chars == 0 and c.next_deadline() is None
    assert c.flush(1.0) == []
    c.feed("New.", 2.0)
    assert texts(c.flush(2.0)) == ["New."]


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        Chunker(max_buffer_length=0)
    with pytest.raises(ValueError):
        Chunker(flush_timeout_ms=-5)
    with pytest.raises(ValueError):
        Chunker(confirm_delay_s=-0.1)


def test_performance_100k_tokens_linear() -> None:
    tokens = ["Hel", "lo w", "orld", ", th", "is i", "s a ", "tes", "t. T", "hen ", "more"]
    c = Chunker()
    fed: list[str] = []
    out: list[TextChunk] = []
    t0 = time.perf_counter()
    for i in range(100_000):
        tok = tokens[i % len(tokens)]
        fed.append(tok)
        out += c.feed(tok, i * 0.001)
    out += c.flush(200.0)
    elapsed = time.perf_counter() - t0
    assert "".join(ch.source for ch in out) == "".join(fed)
    assert elapsed < 2.0


def test_performance_no_punctuation_large_max_buffer() -> None:
    c = Chunker(max_buffer_length=10_000_000)
    t0 = time.perf_counter()
    for _ in range(100_000):
        c.feed("abc ", 0.0)
    (ch,) = c.flush(0.0)
    assert len(ch.text) == 400_000
    assert time.perf_counter() - t0 < 2.0


# -- properties -----------------------------------------------------------------------------------


@dataclass
class Doc:
    raw: str = ""
    plain: str = ""
    spelled: list[str] = field(default_factory=list)
    breaks: int = 0
    atomic: list[tuple[int, int]] = field(default_factory=list)  # no split inside (prosody)
    auto_close: bool = False


WORDS = ["hello", "World", "Über", "naïve", "😀", "日本語", "x", "OK", "a < b", "<3", "élan"]
PUNCT = [".", "!", "?", "…", "。", "！", "？", ",", ";", "...", '."', "?)"]
SPACES = [" ", " ", " ", "\n", "  ", "\t"]
ABBR = ["Dr.", "Mr.", "e.g.", "i.e.", "etc.", "J.", "3.5", "vs.", "St."]
BREAKS = ["<break/>", '<break time="300ms"/>', "<break strength='none'/>",
          '<break time="1.5s"></break>']

fragment = st.one_of(
    st.sampled_from(WORDS).map(lambda w: ("text", w)),
    st.sampled_from(PUNCT).map(lambda w: ("text", w)),
    st.sampled_from(SPACES).map(lambda w: ("text", w)),
    st.sampled_from(ABBR).map(lambda w: ("text", w)),
    st.tuples(st.text("AB12.@-_ x", max_size=6), st.sampled_from(["", ' group="2"', " group='x'"]))
    .map(lambda t: ("spell", t)),
    st.sampled_from(BREAKS).map(lambda w: ("break", w)),
    st.lists(st.sampled_from(["slow", "words", ". ", "Next", "!", " "]), min_size=1, max_size=4)
    .map(lambda ws: ("prosody", "".join(ws))),
    st.sampled_from(WORDS[:4]).map(lambda w: ("tag", w)),
)


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    doc = Doc()
    for kind, value in draw(st.lists(fragment, max_size=40)):
        if kind == "text":
            assert isinstance(value, str)
            doc.raw += value
            doc.plain += value
        elif kind == "spell":
            assert isinstance(value, tuple)
            content, attrs = value
            doc.raw += f"<spell{attrs}>{content}</spell>"
            doc.plain += content
            doc.spelled.append(content)
        elif kind == "break":
            assert isinstance(value, str)
            doc.raw += value
            doc.breaks += 1
        elif kind == "prosody":
            assert isinstance(value, str)
            start = len(doc.raw)
            doc.raw += f'<prosody rate="fast">{value}</prosody>'
            doc.plain += value
            doc.atomic.append((start, len(doc.raw)))
        else:
            assert isinstance(value, str)
            doc.raw += f"<b>{value}</b>"
            doc.plain += value
    if draw(st.booleans()):
        content = draw(st.text("AB.1 ", max_size=4))
        doc.raw += f"<spell>{content}"
        doc.plain += content
        doc.spelled.append(content)
        doc.auto_close = True
    return doc


@st.composite
def splits(draw: st.DrawFn, doc: Doc) -> list[str]:
    allowed = [i for i in range(1, len(doc.raw))
               if not any(a < i < b for a, b in doc.atomic)]
    cuts = sorted(set(draw(st.lists(st.sampled_from(allowed), max_size=12)))) if allowed else []
    bounds = [0, *cuts, len(doc.raw)]
    return [doc.raw[a:b] for a, b in itertools.pairwise(bounds) if b > a]


configs = st.fixed_dictionaries(
    {
        "chunk_length_schedule": st.lists(st.integers(1, 40), min_size=1, max_size=4),
        "auto_mode": st.booleans(),
        "max_buffer_length": st.sampled_from([10_000, 30, 60, 7]),
        "flush_timeout_ms": st.sampled_from([500, 100, 0]),
    }
)

_TERMINAL = re.compile(r"[.!?…。！？\n][\"'”’)\]}»›」』）】〕〉》]*\Z")


def check_chunks(doc: Doc, chunks: list[TextChunk], schedule: list[int], auto: bool) -> None:
    # Text conservation (+ the auto-closing tag of an unterminated span).
    assert "".join(ch.source for ch in chunks) == doc.raw + ("</spell>" if doc.auto_close else "")
    assert "".join(ch.text for ch in chunks) == doc.plain
    # Spell spans are never split: every span's content arrives whole, in order.
    spelled = [ch.text[s.start : s.end] for ch in chunks for s in ch.spells]
    assert spelled == doc.spelled
    assert sum(len(ch.breaks) for ch in chunks) == doc.breaks
    for i, ch in enumerate(chunks):
        assert ch.source.count("<spell") == ch.source.count("</spell>")
        for s in ch.spells:
            assert 0 <= s.start <= s.end <= len(ch.text)
        for b in ch.breaks:
            assert 0 <= b.offset <= len(ch.text) and b.ms in (0, 200, 400, 500)
        for p in ch.prosody:
            assert 0 <= p.start < p.end <= len(ch.text) and p.rate == 1.2
        if ch.reason != "flush":
            assert ch.text.strip(), ch
        assert ch.reason != "flush" or i == len(chunks) - 1
        if ch.reason == "boundary":
            assert _TERMINAL.search(ch.text), ch
            if not (auto and i == 0):
                assert len(ch.text) >= schedule[min(i, len(schedule) - 1)]


@settings(max_examples=250, deadline=None)
@given(st.data(), documents(), configs)
def test_property_rules_1_to_4_and_20_with_time(
    data: st.DataObject, doc: Doc, config: dict[str, object]
) -> None:
    feeds = data.draw(splits(doc))
    steps = data.draw(st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.6]),
                               min_size=len(feeds), max_size=len(feeds)))
    c = Chunker(**config)  # type: ignore[arg-type]
    now = 0.0
    timed: list[tuple[float, str]] = []
    for step, text in zip(steps, feeds, strict=True):
        now += step
        timed.append((now, text))
    out = drive(c, timed, end=now + data.draw(st.sampled_from([0.0, 0.03, 1.0])))
    out += c.flush(now + 2.0)
    assert c.buffered_chars == 0 and c.next_deadline() is None
    schedule = config["chunk_length_schedule"]
    assert isinstance(schedule, list)
    check_chunks(doc, out, schedule, bool(config["auto_mode"]))
    assert c.chunks_emitted == len(out)


@settings(max_examples=250, deadline=None)
@given(st.data(), documents(), configs)
def test_property_result_independent_of_frame_split_rule4(
    data: st.DataObject, doc: Doc, config: dict[str, object]
) -> None:
    """Without time passing, how the text was split into frames changes nothing."""
    feeds = data.draw(splits(doc))
    whole = Chunker(**config)  # type: ignore[arg-type]
    expected = (whole.feed(doc.raw, 0.0) if doc.raw else []) + whole.flush(0.0)
    parts = Chunker(**config)  # type: ignore[arg-type]
    got: list[TextChunk] = []
    for text in feeds:
        got += parts.feed(text, 0.0)
    got += parts.flush(0.0)
    assert got == expected
    schedule = config["chunk_length_schedule"]
    assert isinstance(schedule, list)
    check_chunks(doc, got, schedule, bool(config["auto_mode"]))


def test_rule4_and_rule20_spell_after_period_space_confirms_the_sentence() -> None:
    c = Chunker(chunk_length_schedule=[1])
    assert texts(c.feed("Call me. <spell>abc</spell>", 0.0)) == ["Call me."]
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed("Wow!<spell>abc</spell>", 0.0) == []  # not at a word end


def test_rule4_terminator_at_frame_end_is_decided_by_the_next_frame() -> None:
    """So "Hi!" + "?" gives the same chunks as "Hi!?" when no time passes."""
    c = Chunker(chunk_length_schedule=[1])
    assert c.feed("Hi!", 0.0) == []
    assert texts(c.feed("? Yes", 0.0)) == ["Hi!?"]


def test_flush_runs_overdue_confirm_timer_first() -> None:
    c = Chunker(chunk_length_schedule=[1])
    c.feed("Done. and", 0.0)
    c.feed(" then.", 0.0)
    out = c.flush(0.2)
    assert [(ch.text, ch.reason) for ch in out] == [("Done. and then.", "boundary")]


def test_has_content_ignores_whitespace_only_buffer() -> None:
    c = Chunker()
    assert not c.has_content
    c.feed(" \n ", 0.0)
    assert not c.has_content and c.buffered_chars == 3
    c.feed("<b", 0.0)
    assert c.has_content
