"""Inline markup of streamed text: ``<spell>``, ``<break>``, ``<prosody rate>``
(protocol.md#markup).

The scanner is incremental and pure: :func:`scan` turns one received fragment (plus the incomplete
tag held back from the previous fragment) into *atoms* — runs of plain text and recognised tags —
and hands back whatever tail might still become a tag once more text arrives.  The chunker
(:mod:`._chunker`) consumes the atoms; the value types below describe the markup of one chunk.

Rules (rulings.md#ruling-20, protocol.md#markup):

* ``<spell>`` / ``<spell group="N">`` opens a span (single or double quotes, unknown attributes
  ignored, an invalid group ignored).  Inside a span everything except ``</spell>`` is literal
  text — a nested ``<spell>`` included.  A stray ``</spell>`` is dropped.
* ``<break/>``, ``<break time="300ms"/>``, ``time="1.5s"``, ``strength="..."`` and the
  explicit-close form ``<break ...></break>`` mark a pause, snapped to 200/400/500 ms
  (``strength="none"`` → 0).
* ``<prosody rate="slow|medium|fast|0.8..1.2">…</prosody>`` must open and close within one
  message; nesting, a stray close, an unknown rate or ``pitch``/``volume`` raise
  :class:`MarkupError`.
* Any other tag is stripped, its inner text kept.  A ``<`` that cannot start a tag (``a < b``,
  ``<3``) is text, and so is a candidate that has not closed within :data:`MAX_TAG_LENGTH` chars.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._errors import LocalProtocolError

__all__ = [
    "MAX_TAG_LENGTH",
    "BreakMark",
    "MarkupError",
    "ProsodySpan",
    "SpellSpan",
    "break_ms",
    "prosody_rate",
    "scan",
]

#: Longest tag (from ``<`` to ``>`` inclusive) recognised as markup; longer candidates are text.
MAX_TAG_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class SpellSpan:
    """A ``<spell>`` span inside ``TextChunk.text`` (offsets into the markup-free text)."""

    start: int
    end: int  # exclusive
    group: int | None  # from group="N" (positive int), else None


@dataclass(frozen=True, slots=True)
class BreakMark:
    """A pause at ``offset`` in ``TextChunk.text`` from a ``<break>`` tag: ``ms`` is 0, 200, 400
    or 500 (the tag's ``time`` snapped to one of those, else its ``strength``; see
    :func:`break_ms`)."""

    offset: int
    ms: int


@dataclass(frozen=True, slots=True)
class ProsodySpan:
    """A ``<prosody rate>`` span inside ``TextChunk.text``; ``rate`` in [0.8, 1.2]."""

    start: int
    end: int  # exclusive
    rate: float


class MarkupError(LocalProtocolError):
    """Malformed ``<prosody>`` markup given to :func:`scan` (or a chunker); the message is meant
    for the client's error frame (a server session reports it as a ``VALIDATION_ERROR``)."""


# --- atoms --------------------------------------------------------------------------------------
# An atom is a tuple ``(kind, raw, value)``:
#   TEXT          raw = the text (markup-free, kept verbatim), value = True inside a <spell> span
#   SPELL_OPEN    value = group (int | None)
#   SPELL_CLOSE   value = None
#   BREAK         value = milliseconds (int)
#   PROSODY_OPEN  value = rate (float)
#   PROSODY_CLOSE value = None
#   STRIP         value = None (a tag without meaning: removed from the text)
TEXT: Final = 0
SPELL_OPEN: Final = 1
SPELL_CLOSE: Final = 2
BREAK: Final = 3
PROSODY_OPEN: Final = 4
PROSODY_CLOSE: Final = 5
STRIP: Final = 6

Atom = tuple[int, str, object]

_TAG = re.compile(r"<(/?)([A-Za-z][\w:.-]*)((?:\s[^<>]*?)?)\s*(/?)>")
_TAG_PREFIX = re.compile(r"</?(?:[A-Za-z][\w:.-]*(?:\s[^<>]*|/)?)?")
_ATTR = re.compile(
    r"""([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))"""
)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", re.IGNORECASE)

_STRENGTH_MS: Final = {
    "none": 0,
    "x-weak": 200,
    "weak": 200,
    "medium": 200,
    "strong": 500,
    "x-strong": 500,
}
_RATE_WORDS: Final = {"slow": 0.8, "medium": 1.0, "fast": 1.2}


def _attrs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ATTR.finditer(text):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if value is None:
            value = m.group(4)
        out.setdefault(m.group(1).lower(), value)
    return out


def _snap_ms(ms: float) -> int:
    """protocol.md#break: nearest of 200/400/500 ms, ties to the longer (300 → 400, 450 → 500)."""
    if ms < 300:
        return 200
    if ms < 450:
        return 400
    return 500


def break_ms(attrs: str) -> int:
    """Pause of a ``<break>`` tag from its attribute text (``time`` wins over ``strength``).

    Unparseable values fall back to the bare ``<break/>`` pause of 200 ms.
    """
    values = _attrs(attrs)
    time = values.get("time")
    if time is not None:
        m = _DURATION.fullmatch(time)
        if m is not None:
            amount = float(m.group(1))
            unit = (m.group(2) or "ms").lower()
            return _snap_ms(amount * 1000.0 if unit == "s" else amount)
    strength = values.get("strength")
    if strength is not None:
        return _STRENGTH_MS.get(strength.strip().lower(), 200)
    return 200


def prosody_rate(attrs: str) -> float:
    """Rate of a ``<prosody>`` open tag; raises :class:`MarkupError` when it is not acceptable."""
    values = _attrs(attrs)
    for bad in ("pitch", "volume"):
        if bad in values:
            raise MarkupError(f"<prosody>: the {bad} attribute is not supported (only rate)")
    rate = values.get("rate")
    if rate is None:
        raise MarkupError("<prosody>: a rate attribute is required (slow, medium, fast or 0.8-1.2)")
    word = rate.strip().lower()
    if word in _RATE_WORDS:
        return _RATE_WORDS[word]
    try:
        number = float(word)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or word in {"nan", "inf", "-inf", "+inf", "infinity"}:
        raise MarkupError(f"<prosody>: unknown rate {rate!r} (slow, medium, fast or 0.8-1.2)")
    return min(1.2, max(0.8, number))


def _group(attrs: str) -> int | None:
    value = _attrs(attrs).get("group")
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    group = int(value)
    return group if group > 0 else None


#: What a tag outside a ``<spell>`` span is: ``(closing, self-closing, attribute text, a
#: prosody span is open) -> (atom kind, value, a prosody span is open)``.
_TagResult = tuple[int, object, bool]
_Tag = Callable[[bool, bool, str, bool], _TagResult]


def _spell_tag(closing: bool, self_closing: bool, attrs: str, prosody: bool) -> _TagResult:
    if closing or self_closing:
        return STRIP, None, prosody  # a stray </spell> is dropped; <spell/> spells nothing
    return SPELL_OPEN, _group(attrs), prosody


def _break_tag(closing: bool, self_closing: bool, attrs: str, prosody: bool) -> _TagResult:
    if closing:
        return STRIP, None, prosody  # explicit-close form <break ...></break>
    return BREAK, break_ms(attrs), prosody


def _prosody_tag(closing: bool, self_closing: bool, attrs: str, prosody: bool) -> _TagResult:
    if closing:
        if not prosody:
            raise MarkupError("stray </prosody> without an open <prosody> in this message")
        return PROSODY_CLOSE, None, False
    if self_closing:
        prosody_rate(attrs)  # validated, then dropped
        return STRIP, None, prosody
    if prosody:
        raise MarkupError("<prosody> spans cannot be nested")
    return PROSODY_OPEN, prosody_rate(attrs), True


def _other_tag(closing: bool, self_closing: bool, attrs: str, prosody: bool) -> _TagResult:
    return STRIP, None, prosody  # unknown tags are stripped


_TAGS: Final[dict[str, _Tag]] = {
    "spell": _spell_tag,
    "break": _break_tag,
    "prosody": _prosody_tag,
}


def _may_become_a_tag(data: str, lt: int) -> bool:
    """Whether the ``<`` at ``lt`` starts an incomplete tag candidate (held for more data)."""
    return len(data) - lt < MAX_TAG_LENGTH and _TAG_PREFIX.fullmatch(data, lt) is not None


def scan(data: str, in_spell: bool, *, final: bool = False) -> tuple[list[Atom], str, bool]:
    """Split ``data`` into atoms.

    ``data`` is the held tail of the previous call followed by the new fragment; ``in_spell`` says
    whether a ``<spell>`` span is open at its start.  Returns ``(atoms, tail, in_spell)`` where
    ``tail`` is an incomplete tag candidate at the end (to be prefixed to the next fragment).  With
    ``final=True`` nothing is held back: an incomplete candidate is text.

    Raises :class:`MarkupError` for bad ``<prosody>`` markup in ``data`` (a prosody span must open
    and close within ``data``); the caller then accepts nothing of it.
    """
    atoms: list[Atom] = []
    n = len(data)
    start = 0  # start of the pending text run
    pos = 0  # where to look for the next "<"
    prosody_open = False

    def flush_text(end: int) -> None:
        if end > start:
            atoms.append((TEXT, data[start:end], in_spell))

    while True:
        lt = data.find("<", pos)
        if lt < 0:
            break
        m = _TAG.match(data, lt, min(n, lt + MAX_TAG_LENGTH))
        if m is None:
            if not final and _may_become_a_tag(data, lt):
                flush_text(lt)
                if prosody_open:
                    raise MarkupError("<prosody> must be opened and closed within one message")
                return atoms, data[lt:], in_spell
            pos = lt + 1  # a literal "<"
            continue
        closing = m.group(1) == "/"
        name = m.group(2).lower()
        kind: int
        value: object = None
        if in_spell:
            if not (closing and name == "spell"):
                pos = m.end()  # everything but </spell> is spelled text (nested opens too)
                continue
            kind = SPELL_CLOSE
        else:
            tag = _TAGS.get(name, _other_tag)
            kind, value, prosody_open = tag(closing, m.group(4) == "/", m.group(3), prosody_open)
        flush_text(lt)
        atoms.append((kind, m.group(0), value))
        if kind == SPELL_OPEN:
            in_spell = True
        elif kind == SPELL_CLOSE:
            in_spell = False
        pos = start = m.end()
    flush_text(n)
    if prosody_open:
        raise MarkupError("<prosody> must be opened and closed within one message")
    return atoms, "", in_spell
