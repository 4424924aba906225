"""Exact-output tests of chunker details that mutation testing (mutmut) showed were not pinned
by other tests: validation messages, the smallest max buffer, reconfigure, markup offsets across
max-buffer cuts, the confirm timer's exact edge."""

from __future__ import annotations

import pytest

from kugelwire.protocol._chunker import Chunker
from kugelwire.protocol._markup import ProsodySpan, SpellSpan


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_length_schedule": []},
         "chunk_length_schedule must be a non-empty list of positive integers"),
        ({"chunk_length_schedule": "5"},
         "chunk_length_schedule must be a non-empty list of positive integers"),
        ({"chunk_length_schedule": [5, 0]},
         "chunk_length_schedule must be a non-empty list of positive integers"),
        ({"flush_timeout_ms": -1}, "flush_timeout_ms must be an integer >= 0"),
        ({"max_buffer_length": 0}, "max_buffer_length must be an integer >= 1"),
        ({"confirm_delay_s": -1}, "confirm_delay_s must be >= 0"),
    ],
)
def test_validation_messages(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Chunker(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    if "confirm_delay_s" not in kwargs:
        with pytest.raises(ValueError) as again:
            Chunker().reconfigure(**kwargs)  # type: ignore[arg-type]
        assert str(again.value) == message


def test_smallest_max_buffer_cuts_every_character() -> None:
    c = Chunker(max_buffer_length=1)
    out = c.feed("ab", 0.0)
    assert [(ch.text, ch.reason) for ch in out] == [("a", "max_buffer"), ("b", "max_buffer")]
    c = Chunker()
    c.reconfigure(max_buffer_length=1)
    assert [ch.text for ch in c.feed("xy", 0.0)] == ["x", "y"]


def test_reconfigure_auto_mode_lifts_the_first_chunk_minimum() -> None:
    c = Chunker()
    assert c.feed("Hi! there", 0.0) == []  # "Hi!" is shorter than the schedule's 5
    c = Chunker()
    c.reconfigure(auto_mode=True)
    (chunk,) = c.feed("Hi! there", 0.0)
    assert (chunk.text, chunk.reason) == ("Hi!", "boundary")
    c.reconfigure(auto_mode=None)  # None keeps the setting
    c.reconfigure(flush_timeout_ms=None, max_buffer_length=None, chunk_length_schedule=None)
    assert c.feed(" Ok! more", 0.1) == []  # chunk 1: the schedule's 80 applies


def test_prosody_span_offsets_across_max_buffer_cuts() -> None:
    c = Chunker(max_buffer_length=12)
    out = c.feed('<prosody rate="slow">one two three four</prosody> five', 0.0)
    assert [(ch.text, ch.prosody) for ch in out] == [
        ("o", (ProsodySpan(0, 1, 0.8),)),
        ("ne two ", (ProsodySpan(0, 7, 0.8),)),
        ("three ", (ProsodySpan(0, 6, 0.8),)),
        ("four", (ProsodySpan(0, 4, 0.8),)),
    ]
    assert out[-1].source == "four</prosody>"
    (rest,) = c.flush(0.1)
    assert (rest.text, rest.prosody, rest.reason) == (" five", (), "flush")


def test_spell_span_is_never_cut_by_max_buffer() -> None:
    c = Chunker(max_buffer_length=8)
    out = c.feed("ab <spell>CDEFGHIJ</spell> k", 0.0)
    assert [(ch.text, ch.source, ch.spells) for ch in out] == [
        ("ab ", "ab ", ()),
        ("CDEFGHIJ", "<spell>CDEFGHIJ</spell>", (SpellSpan(0, 8, None),)),
    ]
    (rest,) = c.flush(0.1)
    assert rest.source == " k"


def test_confirm_timer_fires_exactly_at_its_deadline_but_not_before() -> None:
    c = Chunker()
    assert c.feed("Hello world.", 0.0) == []
    assert c.next_deadline() == 0.05
    assert c.handle_timeout(0.049) == []
    (chunk,) = c.handle_timeout(0.05)
    assert (chunk.text, chunk.reason) == ("Hello world.", "boundary")


def test_new_text_exactly_at_the_confirm_deadline_still_decides_the_run() -> None:
    c = Chunker()
    c.feed("Hello world.", 0.0)
    # at exactly the deadline, new input is not "overdue": the next character decides
    assert c.feed("5", 0.05) == []  # "world.5": no boundary
    (chunk,) = c.flush(0.06)
    assert chunk.text == "Hello world.5"


def test_stale_cut_keeps_an_open_spell_span() -> None:
    c = Chunker()
    c.feed("Say <spell>AB", 0.0)
    (chunk,) = c.handle_timeout(0.5)
    assert (chunk.text, chunk.source, chunk.reason) == ("Say ", "Say ", "stale")
    (last,) = c.flush(0.6)
    assert (last.text, last.source, last.spells) == ("AB", "<spell>AB</spell>",
                                                     (SpellSpan(0, 2, None),))
