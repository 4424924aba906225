"""Server-side text buffer and sentence chunker for streamed turns (protocol.md#chunking,
rulings.md#turns).

:class:`Chunker` receives the client's text frames one by one (:meth:`Chunker.feed`) and hands out
:class:`TextChunk` values as soon as a chunk is ready for the engine.  It is pure and deterministic:
time is passed in as ``now`` (monotonic seconds) and the two timers it needs are exposed through
:meth:`Chunker.next_deadline` / :meth:`Chunker.handle_timeout`.

Cutting rules
-------------
* **Boundaries** (rule 4).  ``!`` ``?`` ``…`` (with any closing quotes/brackets after them) cut when
  the next character is whitespace; the CJK ``。！？`` cut whatever follows; a newline cuts right
  after itself.  A ``.`` cuts when it is followed by whitespace and then an uppercase letter, a
  digit, an opening quote or bracket (or a letter without case); "Dr. Smith", "e.g. this", "J. Doe"
  and "3.5" never cut.  A terminator at the end of the buffer is decided by the next fragment, or —
  when input goes quiet for ``confirm_delay_s`` — taken as a boundary (the confirm timer).
* **Schedule** (rule 1).  Chunk *i* may only be cut at a boundary once its text holds at least
  ``chunk_length_schedule[min(i, len - 1)]`` characters; ``auto_mode`` lifts that for chunk 0.
* **Max buffer** (rule 2).  When the buffered (parsed) characters of the chunk being built reach
  ``max_buffer_length``, the chunk is cut after its last whitespace — else at the limit — never
  inside a tag or a ``<spell>`` span (if the span itself is longer, right after it closes).
* **Stale buffer** (rule 3).  ``flush_timeout_ms`` after the last text, everything buffered is
  emitted, except an open ``<spell>`` span and an incomplete tag, which stay held.
* **Flush** (end of turn).  Everything left is emitted; an open ``<spell>`` is auto-closed by
  appending ``</spell>`` to that chunk's ``source``.

A chunk other than the flush chunk always holds non-whitespace text: whitespace (and markup such
as a lone ``<break/>``) between sentences stays in the buffer and starts the next chunk.  The
concatenated ``source`` of all chunks is exactly the text fed (plus an auto-closing ``</spell>``).
Work is linear in the text: each character is scanned once, buffers are joined only when cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ._errors import LocalProtocolError
from ._markup import (
    BREAK,
    PROSODY_CLOSE,
    PROSODY_OPEN,
    SPELL_CLOSE,
    SPELL_OPEN,
    TEXT,
    BreakMark,
    ProsodySpan,
    SpellSpan,
    scan,
)

__all__ = ["Chunker", "TextChunk"]

DEFAULT_SCHEDULE: Final = (5, 80, 150, 250)


@dataclass(frozen=True, slots=True)
class TextChunk:
    """One chunk for the engine.

    ``text`` is the plain text to speak (tags removed, spelled characters kept as they are);
    ``source`` is the raw received text of the chunk including markup (echoed in
    ``generation_started``).  Offsets in ``spells``/``breaks``/``prosody`` index into ``text``.
    ``reason`` is ``"boundary"``, ``"stale"``, ``"max_buffer"`` or ``"flush"``.
    """

    text: str
    source: str
    spells: tuple[SpellSpan, ...]
    breaks: tuple[BreakMark, ...]
    prosody: tuple[ProsodySpan, ...]
    reason: str


# Characters of a terminator run.
_TERM_FIND = re.compile(r"[.!?…。！？\n]")
_STRONG: Final = frozenset("!?…")
_CJK: Final = frozenset("。！？")
_TERMS: Final = frozenset(".!?…。！？")
_CLOSERS: Final = frozenset("\"'”’)]}»›」』）】〕〉》")
# After ". " these confirm a sentence start (besides uppercase/caseless letters and digits).
_OPENERS: Final = frozenset("\"'“‘„«‹‚([{¿¡「『（【〔〈《")
_ABBREVIATIONS: Final = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e"}
)
_WORD_STRIP: Final = "\"'“‘„«‹‚([{¿¡「『（【〔〈《"
_WORD_KEEP: Final = 16
_NONWS = re.compile(r"\S")
_LAST_WS = re.compile(r"\s(?=\S*\Z)")

# Boundary detector states.
_NONE: Final = 0
_RUN: Final = 1  # inside a run of terminators (and closers after them)
_AWAIT: Final = 2  # "." run followed by whitespace: the next visible character decides


def _check_schedule(schedule: Sequence[int]) -> tuple[int, ...]:
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
        raise LocalProtocolError(
            "chunk_length_schedule must be a non-empty list of positive integers"
        )
    values = tuple(schedule)
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise LocalProtocolError(
            "chunk_length_schedule must be a non-empty list of positive integers"
        )
    return values


def _check_int(name: str, value: int, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise LocalProtocolError(f"{name} must be an integer >= {lo}")
    return value


def _is_abbreviation(word: str) -> bool:
    word = word.lstrip(_WORD_STRIP)
    if len(word) == 1:
        return word.isupper() and word != "I"  # a single capital initial ("J. Doe")
    return word.lower() in _ABBREVIATIONS


def _confirms(c: str) -> bool:
    """Does ``c`` (first visible character after ". ") start a new sentence?"""
    if c.isalpha():
        return not c.islower()
    return c.isdigit() or c in _OPENERS


class Chunker:
    """Incremental text buffer for one turn (or one context) — see the module docstring."""

    def __init__(
        self,
        *,
        chunk_length_schedule: Sequence[int] = DEFAULT_SCHEDULE,
        auto_mode: bool = False,
        flush_timeout_ms: int = 500,
        max_buffer_length: int = 10000,
        confirm_delay_s: float = 0.05,
    ) -> None:
        self._schedule = _check_schedule(chunk_length_schedule)
        self._auto = bool(auto_mode)
        self._stale_s = _check_int("flush_timeout_ms", flush_timeout_ms, 0) / 1000.0
        self._max = _check_int("max_buffer_length", max_buffer_length, 1)
        if not confirm_delay_s >= 0:
            raise LocalProtocolError("confirm_delay_s must be >= 0")
        self._confirm_s = float(confirm_delay_s)
        self._emitted = 0
        self._cycle_base = 0  # chunks emitted before the current flush-cycle (schedule origin)
        self._last_feed: float | None = None
        self._out: list[TextChunk] = []
        self._reset()

    # -- state ----------------------------------------------------------------------------------

    def _reset(self) -> None:
        # Markup scanner: incomplete tag held back, and whether a <spell> span is open.
        self._tail = ""
        self._in_spell = False
        # The chunk being built (parsed text only; offsets are relative to its start).
        self._raw_parts: list[str] = []
        self._text_parts: list[str] = []
        self._raw_len = 0
        self._text_len = 0
        self._content: int | None = None  # text offset of the first non-whitespace character
        self._spells: list[tuple[int, int, int, int | None]] = []  # (raw_end, start, end, group)
        self._spell_open: tuple[int, int, int | None] | None = None  # (raw_start, start, group)
        self._breaks: list[tuple[int, int, int]] = []  # (raw_pos, offset, ms)
        self._prosody: list[tuple[int, int, float]] = []  # (start, end, rate)
        self._prosody_open: tuple[int, float] | None = None  # (start, rate)
        # Max-buffer cut candidates: (raw, text) after the last whitespace / last valid position.
        self._last_ws: tuple[int, int] | None = None
        self._last_valid: tuple[int, int] | None = None
        self._overflow = False  # limit reached, no cut possible yet: cut at the next valid spot
        # Boundary detector.
        self._state = _NONE
        self._strong = False  # the current run holds ! ? … or CJK
        self._cjk = False
        self._cand = (0, 0)  # (raw, text) end of the current run
        self._word = ""  # trailing non-whitespace text (at most _WORD_KEEP chars)

    def clear(self) -> None:
        """Drop everything buffered (barge-in).  ``chunks_emitted`` keeps counting."""
        self._reset()
        self._last_feed = None

    def new_cycle(self) -> None:
        """Start the schedule over: the next chunk is a cycle's first (``/ws/tts/multi``: each
        flush-cycle of a context is spoken like a new turn, so its first chunk is short)."""
        self._cycle_base = self._emitted

    def reconfigure(
        self,
        *,
        chunk_length_schedule: Sequence[int] | None = None,
        auto_mode: bool | None = None,
        flush_timeout_ms: int | None = None,
        max_buffer_length: int | None = None,
    ) -> None:
        """Change settings (``None`` keeps the current value); they apply to the next cuts."""
        schedule = (
            self._schedule
            if chunk_length_schedule is None
            else _check_schedule(chunk_length_schedule)
        )
        stale = (
            self._stale_s
            if flush_timeout_ms is None
            else _check_int("flush_timeout_ms", flush_timeout_ms, 0) / 1000.0
        )
        maximum = (
            self._max
            if max_buffer_length is None
            else _check_int("max_buffer_length", max_buffer_length, 1)
        )
        self._schedule, self._stale_s, self._max = schedule, stale, maximum
        if auto_mode is not None:
            self._auto = bool(auto_mode)

    @property
    def buffered_chars(self) -> int:
        """Raw characters received and not yet emitted (an incomplete tag included)."""
        return self._raw_len + len(self._tail)

    @property
    def has_content(self) -> bool:
        """Whether the buffer holds anything to speak: visible text, a spell span, a break, or
        an incomplete tag.  Whitespace alone (e.g. the SDKs' ``" "`` opener) is not content."""
        return (
            self._content is not None
            or bool(self._tail)
            or self._spell_open is not None
            or bool(self._spells)
            or bool(self._breaks)
        )

    @property
    def chunks_emitted(self) -> int:
        return self._emitted

    # -- public operations ----------------------------------------------------------------------

    def feed(self, text: str, now: float) -> list[TextChunk]:
        """Append one client text frame; return the chunks that are now ready.

        Raises :class:`~kugelwire.protocol._markup.MarkupError` for bad ``<prosody>`` markup; then
        nothing of ``text`` is accepted and the buffer is unchanged.
        """
        if not text:
            return self.handle_timeout(now)
        atoms, tail, in_spell = scan(self._tail + text, self._in_spell)  # may raise: no change
        self._timers(now, overdue=True)
        self._tail, self._in_spell = tail, in_spell
        self._last_feed = now
        self._consume(atoms)
        return self._take()

    def flush(self, now: float) -> list[TextChunk]:
        """End of the turn: emit everything left; an open ``<spell>`` span is auto-closed."""
        self._timers(now, overdue=True)
        if self._tail:
            atoms, _, self._in_spell = scan(self._tail, self._in_spell, final=True)
            self._tail = ""
            self._consume(atoms)
        self._state = _NONE
        if self._raw_len:
            closing = ""
            if self._spell_open is not None:
                closing = "</spell>"
                _, start, group = self._spell_open
                self._spells.append((self._raw_len, start, self._text_len, group))
                self._spell_open = None
            self._emit(self._raw_len, self._text_len, "flush", closing)
        self._reset()
        self._last_feed = None
        return self._take()

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`handle_timeout` has work, or ``None``."""
        if self._last_feed is None:
            return None
        deadline: float | None = None
        if self._state != _NONE:
            deadline = self._last_feed + self._confirm_s
        if self._stale_cut() is not None:
            stale = self._last_feed + self._stale_s
            deadline = stale if deadline is None else min(deadline, stale)
        return deadline

    def handle_timeout(self, now: float) -> list[TextChunk]:
        """Run the confirm and stale timers that are due at ``now``."""
        self._timers(now)
        return self._take()

    # -- timers ---------------------------------------------------------------------------------

    def _timers(self, now: float, *, overdue: bool = False) -> None:
        """Run due timers; ``overdue`` (before new input) only those strictly past their time."""
        if self._last_feed is None:
            return
        confirm_at = self._last_feed + self._confirm_s
        if self._state != _NONE and (now > confirm_at or (now == confirm_at and not overdue)):
            # Input went quiet after a terminator: it ends the sentence.
            self._state = _NONE
            self._boundary(*self._cand)
        stale_at = self._last_feed + self._stale_s
        if now > stale_at or (now == stale_at and not overdue):
            cut = self._stale_cut()
            if cut is not None:
                self._state = _NONE
                self._emit(cut[0], cut[1], "stale")

    def _stale_cut(self) -> tuple[int, int] | None:
        """Where a stale-buffer cut would go (before an open spell span), if it emits anything."""
        if self._spell_open is not None:
            raw, text = self._spell_open[0], self._spell_open[1]
        else:
            raw, text = self._raw_len, self._text_len
        if self._content is None or self._content >= text:
            return None
        return raw, text

    def _take(self) -> list[TextChunk]:
        out, self._out = self._out, []
        return out

    # -- scanning -------------------------------------------------------------------------------

    def _consume(self, atoms: list[tuple[int, str, object]]) -> None:
        for kind, raw, value in atoms:
            if kind == TEXT:
                if value:
                    self._spelled(raw)
                else:
                    self._plain(raw)
                continue
            if kind == SPELL_OPEN:
                self._before_spell()
                assert value is None or isinstance(value, int)
                self._spell_open = (self._raw_len, self._text_len, value)
            elif kind == SPELL_CLOSE:
                if self._spell_open is not None:
                    _, start, group = self._spell_open
                    self._spells.append((self._raw_len + len(raw), start, self._text_len, group))
                    self._spell_open = None
            elif kind == BREAK:
                assert isinstance(value, int)
                self._breaks.append((self._raw_len, self._text_len, value))
            elif kind == PROSODY_OPEN:
                assert isinstance(value, float)
                self._prosody_open = (self._text_len, value)
            elif kind == PROSODY_CLOSE and self._prosody_open is not None:
                start, rate = self._prosody_open
                if self._text_len > start:
                    self._prosody.append((start, self._text_len, rate))
                self._prosody_open = None
            self._raw_parts.append(raw)
            self._raw_len += len(raw)
            self._after_atom()

    def _after_atom(self) -> None:
        """Bookkeeping after each atom: valid cut positions and the max-buffer limit."""
        here = (self._raw_len, self._text_len)
        valid = self._spell_open is None and self._content is not None
        if self._overflow:
            if valid:
                self._overflow = False
                self._emit(here[0], here[1], "max_buffer")
            return
        if here[0] >= self._max:
            cut = self._last_ws
            if cut is None:
                cut = here if valid and here[0] == self._max else self._last_valid
            if cut is None and valid:
                cut = here
            if cut is None:
                self._overflow = True
            else:
                self._emit(cut[0], cut[1], "max_buffer")
                return
        if valid:
            self._last_valid = here

    def _append(self, s: str, spelled: bool) -> None:
        """Add visible text ``s`` (already known to hold no boundary decision) to the chunk."""
        raw0, text0 = self._raw_len, self._text_len
        self._raw_parts.append(s)
        self._text_parts.append(s)
        self._raw_len += len(s)
        self._text_len += len(s)
        if self._content is None:
            m = _NONWS.search(s)
            if m is not None:
                self._content = text0 + m.start()
        m = _LAST_WS.search(s)
        if m is None:
            word = self._word + s
        else:
            word = s[m.end() :]
            if not spelled and self._content is not None and self._content < text0 + m.start():
                self._last_ws = (raw0 + m.end(), text0 + m.end())
        self._word = word[-_WORD_KEEP:]
        self._after_atom()

    def _spelled(self, s: str) -> None:
        # Spelled text holds no boundaries, and no cut can go inside it.
        self._append(s, True)

    def _plain(self, s: str) -> None:
        i, n = 0, len(s)
        while i < n:
            state = self._state
            if state == _NONE:
                i = self._plain_none(s, i, n)
            elif state == _RUN:
                i = self._plain_run(s, i)
            else:
                i = self._plain_await(s, i)

    def _plain_none(self, s: str, i: int, n: int) -> int:
        """No terminator pending: take text up to the next terminator, or the terminator."""
        m = _TERM_FIND.search(s, i)
        end = n if m is None else m.start()
        if end > i:
            end = self._text_end(s, i, end)
            self._append(s[i:end], False)
            return end
        c = s[i]
        if c == "\n":
            self._append(c, False)
            self._boundary(self._raw_len, self._text_len)
        elif c == "." and _is_abbreviation(self._word):
            self._append(c, False)
        else:
            self._append(c, False)
            if self._raw_len:  # (a max-buffer cut right after it took the terminator)
                self._state = _RUN
                self._strong = c in _STRONG or c in _CJK
                self._cjk = c in _CJK
                self._cand = (self._raw_len, self._text_len)
        return i + 1

    def _text_end(self, s: str, i: int, end: int) -> int:
        """Where the text run ``s[i:end]`` is appended up to: it stops exactly at the
        max-buffer limit so the cut is decided there."""
        if not self._overflow:
            room = self._max - self._raw_len
            return i + room if 0 < room < end - i else end
        if self._spell_open is None and self._content is None:
            # Over the limit with only whitespace so far: cut after the first visible
            # character.
            first = _NONWS.search(s, i, end)
            if first is not None:
                return first.end()
        return end

    def _plain_run(self, s: str, i: int) -> int:
        """In a terminator run: extend it, or end it at ``s[i]`` (not consumed)."""
        c = s[i]
        if c in _TERMS or c in _CLOSERS:
            self._append(c, False)
            if self._state == _RUN:  # (a max-buffer cut may have reset it)
                if c in _STRONG or c in _CJK:
                    self._strong = True
                    self._cjk = self._cjk or c in _CJK
                self._cand = (self._raw_len, self._text_len)
            return i + 1
        self._end_run(c)
        return i

    def _plain_await(self, s: str, i: int) -> int:
        """After a weak terminator and whitespace: what follows confirms the cut or not."""
        c = s[i]
        if c == "\n":
            self._state = _NONE  # the newline cuts right after itself
        elif c.isspace():
            self._append(c, False)
            return i + 1
        else:
            self._state = _NONE
            if _confirms(c):
                self._boundary(*self._cand)
        return i

    def _end_run(self, c: str) -> None:
        """The terminator run ended and ``c`` follows it (``c`` is not consumed)."""
        self._state = _NONE
        if c == "\n":
            return  # the newline itself cuts right after, taking the run with it
        if self._cjk:
            self._boundary(*self._cand)
        elif c.isspace():
            if self._strong:
                self._boundary(*self._cand)
            else:
                self._state = _AWAIT

    def _before_spell(self) -> None:
        """A ``<spell>`` span opens: it ends a pending terminator run like a visible character
        would (no word end, so only a CJK run cuts) and confirms a pending ". "."""
        if self._state == _RUN:
            self._state = _NONE
            if self._cjk:
                self._boundary(*self._cand)
        elif self._state == _AWAIT:
            self._state = _NONE
            self._boundary(*self._cand)

    # -- cutting --------------------------------------------------------------------------------

    def _boundary(self, raw: int, text: int) -> None:
        """A sentence boundary at (raw, text): cut there if the schedule allows."""
        if self._content is None or self._content >= text:
            return
        pos = self._emitted - self._cycle_base
        if not (self._auto and pos == 0):
            minimum = self._schedule[min(pos, len(self._schedule) - 1)]
            if text < minimum:
                return
        self._emit(raw, text, "boundary")

    def _emit(self, r: int, t: int, reason: str, closing: str = "") -> None:
        """Emit the first ``r`` raw / ``t`` text characters of the chunk being built."""
        raw = "".join(self._raw_parts)
        text = "".join(self._text_parts)
        rest_raw, rest_text = raw[r:], text[t:]

        spells: list[SpellSpan] = []
        keep_spells: list[tuple[int, int, int, int | None]] = []
        for raw_end, start, end, group in self._spells:
            if raw_end <= r:
                spells.append(SpellSpan(start, end, group))
            else:
                keep_spells.append((raw_end - r, start - t, end - t, group))
        breaks: list[BreakMark] = []
        keep_breaks: list[tuple[int, int, int]] = []
        for pos, offset, ms in self._breaks:
            if pos < r:
                breaks.append(BreakMark(offset, ms))
            else:
                keep_breaks.append((pos - r, offset - t, ms))
        prosody: list[ProsodySpan] = []
        keep_prosody: list[tuple[int, int, float]] = []
        for start, end, rate in self._prosody:
            if start < t:
                prosody.append(ProsodySpan(start, min(end, t), rate))
            if end > t:
                keep_prosody.append((max(start, t) - t, end - t, rate))
        if self._prosody_open is not None:
            start, rate = self._prosody_open
            if start < t:
                prosody.append(ProsodySpan(start, t, rate))
            self._prosody_open = (max(start, t) - t, rate)

        self._out.append(
            TextChunk(
                text[:t],
                raw[:r] + closing,
                tuple(spells),
                tuple(breaks),
                tuple(prosody),
                reason,
            )
        )
        self._emitted += 1

        self._raw_parts = [rest_raw] if rest_raw else []
        self._text_parts = [rest_text] if rest_text else []
        self._raw_len, self._text_len = len(rest_raw), len(rest_text)
        m = _NONWS.search(rest_text)
        self._content = None if m is None else m.start()
        self._spells, self._breaks, self._prosody = keep_spells, keep_breaks, keep_prosody
        if self._spell_open is not None:
            raw_start, start, group = self._spell_open
            self._spell_open = (raw_start - r, start - t, group)
        self._last_ws = None
        self._last_valid = None
        self._overflow = False
        if self._state != _NONE:
            cand_raw, cand_text = self._cand
            if cand_raw <= r:
                self._state = _NONE
            else:
                self._cand = (cand_raw - r, cand_text - t)
        if self._raw_len:
            self._after_atom()
