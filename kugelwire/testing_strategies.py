"""Hypothesis strategies for testing code built on the kugelwire core.

This module needs `hypothesis <https://hypothesis.readthedocs.io>`_ (``pip install hypothesis``);
:mod:`kugelwire.testing` itself does not. The strategies generate the inputs that break streaming
TTS code in practice:

* :func:`llm_tokens` / :func:`token_streams` — text fragments the way an LLM streams them:
  words with their leading space, sentence punctuation, newlines, ``<spell>`` spans and
  ``<break time="200ms"/>`` tags (sometimes cut in the middle of a tag), unicode, emoji and CJK.
* :func:`server_frames` — server frame sequences (JSON text) for a client session: well-formed
  turns, interleaved with cancels' ``interrupted``, warnings, errors and frames of unknown kind.
* :func:`timer_steps` — clock advances that land before, on and after the protocol's timers
  (confirm 50 ms, stale 500 ms, client idle guard 4.5 s, server idle 5 s, context 20 s).
* :func:`network_splits` — how many messages to deliver / engine pieces to run per step, so a
  test can split and merge deliveries arbitrarily (never reordering them: TCP).

    from hypothesis import given
    from kugelwire.testing_strategies import token_streams

    @given(token_streams())
    def test_every_token_is_spoken(tokens: list[str]) -> None: ...
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "BREAK_TAGS",
    "CJK_TOKENS",
    "MARKUP_TOKENS",
    "TIMER_EDGES",
    "WORD_TOKENS",
    "llm_tokens",
    "network_splits",
    "server_frames",
    "stream_turn_frames",
    "timer_steps",
    "token_streams",
]

#: Tokens as an LLM streams English: a word usually carries its leading space.
WORD_TOKENS: tuple[str, ...] = (
    "Hello", " there", ",", " how", " are", " you", "?", " I", " am", " fine", ".", " Dr",
    ". ", "Smith", " e.g.", " 3", ".5", " ok", "!", " The", " end", "...", "\n", " ", "  ",
    "\"Quote.\"", " (paren)", " J.", " Doe", " A", ". B", "…", " ",
)
#: Unicode that is not ASCII: accents, emoji (astral plane, ZWJ sequences), CJK with its stops.
CJK_TOKENS: tuple[str, ...] = (
    "Ünïcödé", " naïve", " 😀", "👩‍👩‍👧", " 🎉!", "你好", "。", "世界", "！", "こんにちは", "？",
    "한국어", " ß", "Ω", "\u00a0", "\u2028", "ﬁ",
)
#: ``<break>`` forms the scanner recognises (rulings.md#ruling-20).
BREAK_TAGS: tuple[str, ...] = (
    '<break time="200ms"/>', "<break/>", "<break time='1.5s'/>", '<break strength="none"/>',
    '<break time="300ms"></break>',
)
#: Markup tokens, including tags cut across two tokens and tags that are really text.
MARKUP_TOKENS: tuple[str, ...] = (
    "<spell>", "</spell>", '<spell group="2">', "ABC", "K2-7", "<sp", "ell>", "</sp", "ell> ",
    '<break time="', '200ms"/>', "<b>", "</b>", " a < b", " <3", "<", ">", "<unknown tag>",
    *BREAK_TAGS,
)


def llm_tokens() -> st.SearchStrategy[str]:
    """One streamed text fragment: mostly words, sometimes markup, unicode or arbitrary text."""
    return st.one_of(
        st.sampled_from(WORD_TOKENS),
        st.sampled_from(WORD_TOKENS),
        st.sampled_from(MARKUP_TOKENS),
        st.sampled_from(CJK_TOKENS),
        st.text(min_size=1, max_size=12),
    )


def token_streams(*, min_size: int = 1, max_size: int = 30) -> st.SearchStrategy[list[str]]:
    """A list of fragments making up one utterance (every fragment non-empty)."""
    return st.lists(llm_tokens(), min_size=min_size, max_size=max_size)


#: Clock advances that straddle each timer of the protocol.
TIMER_EDGES: tuple[float, ...] = (0.0, 0.049, 0.05, 0.051, 0.5, 0.501, 4.5, 5.0, 5.001, 20.0, 21.0)


def timer_steps(*, max_value: float = 25.0) -> st.SearchStrategy[float]:
    """A clock advance in seconds: a timer edge or any value in ``[0, max_value]``."""
    return st.one_of(
        st.sampled_from([t for t in TIMER_EDGES if t <= max_value]),
        st.floats(0.0, max_value, allow_nan=False, allow_infinity=False),
    )


def network_splits(*, max_step: int = 6) -> st.SearchStrategy[int]:
    """How many messages (or engine pieces) to move in one step: 0 (nothing) to ``max_step``."""
    return st.integers(0, max_step)


def _audio(idx: int, chunk_id: int, samples: int, context_id: str | None) -> dict[str, Any]:
    pcm = (b"\x00\x10" * samples)[: samples * 2]
    frame: dict[str, Any] = {
        "audio": base64.b64encode(pcm).decode("ascii"),
        "enc": "pcm_s16le",
        "idx": idx,
        "sr": 24000,
        "samples": samples,
        "chunk_id": chunk_id,
    }
    if context_id is not None:
        frame["context_id"] = context_id
    return frame


@st.composite
def stream_turn_frames(draw: st.DrawFn, *, context_id: str | None = None) -> list[str]:
    """The frames of one complete, well-formed turn, in wire order (JSON text)."""
    chunks = draw(st.integers(0, 3))
    out: list[dict[str, Any]] = []
    idx = 0
    seconds = 0.0
    ctx: dict[str, Any] = {} if context_id is None else {"context_id": context_id}
    for chunk_id in range(chunks):
        out.append({"generation_started": True, "chunk_id": chunk_id, "text": "Hi.", **ctx})
        chunk_samples = 0
        for _ in range(draw(st.integers(0, 3))):
            samples = draw(st.integers(1, 480))
            out.append(_audio(idx, chunk_id, samples, context_id))
            idx += 1
            chunk_samples += samples
        seconds += chunk_samples / 24000
        out.append(
            {
                "chunk_complete": True,
                "chunk_id": chunk_id,
                "audio_seconds": round(chunk_samples / 24000, 6),
                "gen_ms": 1.0,
                **ctx,
            }
        )
    out.append({"final": True, "total_audio_seconds": round(seconds, 6), **ctx})
    if context_id is None:
        out.append(
            {
                "session_closed": True,
                "total_audio_seconds": round(seconds, 6),
                "total_text_chunks": chunks,
                "total_audio_chunks": idx,
            }
        )
    return [json.dumps(f) for f in out]


_NOISE: tuple[dict[str, Any], ...] = (
    {"interrupted": True},
    {"warning": "Turn ended after 5s of inactivity."},
    {"error": "bad", "error_code": "INVALID_MESSAGE", "code": 400},
    {"some_future_frame": True},
    {"settings_updated": True, "settings": {"speed": 1.1}},
)


@st.composite
def server_frames(
    draw: st.DrawFn, *, context_id: str | None = None, max_turns: int = 3
) -> list[str]:
    """A server frame sequence: whole turns with noise frames (``interrupted``, warnings,
    errors, unknown kinds) inserted anywhere, and sometimes a turn cut off mid-way."""
    frames: list[str] = []
    for _ in range(draw(st.integers(0, max_turns))):
        turn = draw(stream_turn_frames(context_id=context_id))
        if draw(st.booleans()) and turn:
            turn = turn[: draw(st.integers(0, len(turn)))]
        frames.extend(turn)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(frames)))
        noise = dict(draw(st.sampled_from(_NOISE)))
        if context_id is not None and "interrupted" in noise:
            noise["context_id"] = context_id
        frames.insert(pos, json.dumps(noise))
    return frames
