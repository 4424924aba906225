"""Fenced code blocks of the documentation pages, for tests that run them."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: ``<!-- skip-test -->`` / ``<!-- test: pytest -->`` right above a fence (blank lines allowed).
_FENCE = re.compile(
    r"(?:^[ \t]*<!--\s*(?P<directive>[^>]*?)\s*-->[ \t]*\n(?:[ \t]*\n)*)?"
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    directive: str  # "" | "skip-test" | "test: pytest"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str, lang: str | None = None) -> list[Block]:
    """The fenced blocks of ``docs/<page>`` (of language ``lang``), in page order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        if lang is not None and m.group("lang") != lang:
            continue
        line = text.count("\n", 0, m.start("indent")) + 1
        body = textwrap.dedent(m.group("body"))
        found.append(Block(page, line, m.group("lang"), body, m.group("directive") or ""))
    return found
