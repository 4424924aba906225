"""Invariant helpers shared by the model tests.

The text-conservation rule (what the engine is asked to speak vs. what the client sent), stated
precisely, as the chunker implements it (``kugelwire/protocol/_chunker.py``):

1. Per chunk: ``chunk.text`` is the markup-free text of ``chunk.source`` — scanning the source on
   its own (``scan(source, False, final=True)``) yields exactly ``chunk.text`` and exactly
   ``chunk.spells`` / ``chunk.breaks``. So a chunk never starts or ends inside a tag, and a
   ``<spell>`` span is never split across chunks (a span still open at the flush is closed by a
   ``</spell>`` appended to the last chunk's source).
2. Per turn (context flush-cycle): the chunks' sources, concatenated in ``chunk_id`` order, are
   the text sent for the turn — character for character, whitespace and markup included — plus
   that auto-closing ``</spell>``, except for a trailing flush chunk whose markup-free text is
   only whitespace and that holds no spell span or break: the server does not send it to the
   engine (there is nothing to speak), so it appears in no ``generation_started``.
"""

from __future__ import annotations

from kugelwire.protocol._chunker import TextChunk
from kugelwire.protocol._markup import BREAK, SPELL_CLOSE, SPELL_OPEN, TEXT, scan


def plain(source: str) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]], bool]:
    """Markup-free text, spell spans, break marks (offset, ms), and whether a spell stays open,
    of ``source`` scanned on its own."""
    atoms, _, in_spell = scan(source, False, final=True)
    text: list[str] = []
    n = 0
    spells: list[tuple[int, int]] = []
    breaks: list[tuple[int, int]] = []
    open_at: int | None = None
    for kind, raw, value in atoms:
        if kind == TEXT:
            text.append(raw)
            n += len(raw)
        elif kind == SPELL_OPEN:
            open_at = n
        elif kind == SPELL_CLOSE and open_at is not None:
            spells.append((open_at, n))
            open_at = None
        elif kind == BREAK:
            assert isinstance(value, int)
            breaks.append((n, value))
    if open_at is not None:
        spells.append((open_at, n))
    return "".join(text), spells, breaks, in_spell


def check_chunk(chunk: TextChunk) -> None:
    """Rule 1: a chunk's text and markup are those of its own source."""
    text, spells, breaks, still_open = plain(chunk.source)
    assert not still_open, f"spell span split across chunks: {chunk.source!r}"
    assert chunk.text == text, (chunk.source, chunk.text, text)
    assert [(s.start, s.end) for s in chunk.spells] == spells, (chunk.source, chunk.spells)
    assert [(b.offset, b.ms) for b in chunk.breaks] == breaks, (chunk.source, chunk.breaks)


def check_turn_text(sent: str, sources: list[str]) -> None:
    """Rule 2: the spoken chunks' sources make up the sent text (see the module docstring)."""
    joined = "".join(sources)
    if joined == sent + "</spell>":
        assert plain(sent)[3], "an auto-closing </spell> without an open span"
        return
    assert sent.startswith(joined), (sent, sources)
    rest = sent[len(joined) :]
    text, spells, breaks, _ = plain(rest)
    assert not text.strip() and not spells and not breaks, (sent, sources, rest)
