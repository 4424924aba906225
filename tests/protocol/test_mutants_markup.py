"""Exact-output tests of the markup scanner that mutation testing (mutmut) showed were not
pinned by other tests: atom kinds, unquoted attributes, units, error messages, the tag-length
limit."""

from __future__ import annotations

import pytest

from kugelwire.protocol._markup import (
    BREAK,
    MAX_TAG_LENGTH,
    PROSODY_CLOSE,
    PROSODY_OPEN,
    SPELL_CLOSE,
    SPELL_OPEN,
    STRIP,
    TEXT,
    MarkupError,
    scan,
)


@pytest.mark.parametrize(
    ("source", "atoms"),
    [
        ("<spell group=1>A</spell>",
         [(SPELL_OPEN, "<spell group=1>", 1), (TEXT, "A", True), (SPELL_CLOSE, "</spell>", None)]),
        ("<spell group=0>A</spell>",
         [(SPELL_OPEN, "<spell group=0>", None), (TEXT, "A", True),
          (SPELL_CLOSE, "</spell>", None)]),
        ("</spell>x", [(STRIP, "</spell>", None), (TEXT, "x", False)]),
        ("<spell/>", [(STRIP, "<spell/>", None)]),
        ("<break time=1s></break>", [(BREAK, "<break time=1s>", 500), (STRIP, "</break>", None)]),
        ('<break time="0.25s"/>', [(BREAK, '<break time="0.25s"/>', 200)]),
        ('<break time="300"/>', [(BREAK, '<break time="300"/>', 400)]),
        ('<break time="0.4S"/>', [(BREAK, '<break time="0.4S"/>', 400)]),
        ("<b>x</b>", [(STRIP, "<b>", None), (TEXT, "x", False), (STRIP, "</b>", None)]),
        ("<prosody rate=slow>a</prosody>",
         [(PROSODY_OPEN, "<prosody rate=slow>", 0.8), (TEXT, "a", False),
          (PROSODY_CLOSE, "</prosody>", None)]),
    ],
)
def test_atoms(source: str, atoms: list[tuple[int, str, object]]) -> None:
    assert scan(source, False, final=True) == (atoms, "", False)


def test_spell_state_is_reported_after_close() -> None:
    assert scan("<spell>A</spell>b", False) == (
        [(SPELL_OPEN, "<spell>", None), (TEXT, "A", True), (SPELL_CLOSE, "</spell>", None),
         (TEXT, "b", False)],
        "",
        False,
    )
    assert scan("x", True)[2] is True


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('<prosody rate="slow">a', "<prosody> must be opened and closed within one message"),
        ("a</prosody>", "stray </prosody> without an open <prosody> in this message"),
        ('<prosody rate="slow"><prosody rate="fast">a</prosody></prosody>',
         "<prosody> spans cannot be nested"),
        ('<prosody volume="x">a</prosody>',
         "<prosody>: the volume attribute is not supported (only rate)"),
        ('<prosody pitch="x">a</prosody>',
         "<prosody>: the pitch attribute is not supported (only rate)"),
        ("<prosody>a</prosody>",
         "<prosody>: a rate attribute is required (slow, medium, fast or 0.8-1.2)"),
        ('<prosody rate="odd">a</prosody>',
         "<prosody>: unknown rate 'odd' (slow, medium, fast or 0.8-1.2)"),
    ],
)
def test_markup_error_messages(source: str, message: str) -> None:
    with pytest.raises(MarkupError) as info:
        scan(source, False, final=True)
    assert str(info.value) == message


def test_prosody_open_at_end_of_message_is_an_error_even_when_held() -> None:
    with pytest.raises(MarkupError, match="within one message"):
        scan('<prosody rate="slow">a', False)


def test_tag_length_limit_is_inclusive() -> None:
    longest = "<" + "a" * (MAX_TAG_LENGTH - 2) + ">"
    assert len(longest) == MAX_TAG_LENGTH
    assert scan(longest, False) == ([(STRIP, longest, None)], "", False)
    too_long = "<" + "a" * (MAX_TAG_LENGTH - 1) + ">"
    atoms, tail, _ = scan(too_long, False)
    assert tail == "" and "".join(raw for _, raw, _ in atoms) == too_long
    assert all(kind == TEXT for kind, _, _ in atoms)
    # an unfinished candidate one short of the limit is held back as the tail
    held = longest[:-1]
    assert scan(held, False) == ([], held, False)
    assert scan("ab" + held, False) == ([(TEXT, "ab", False)], held, False)
