"""mkdocs hooks for the kugelwire documentation (wired up in ``mkdocs.yml``).

* State diagrams are generated from the core's transition tables
  (:mod:`kugelwire.protocol._state`), never drawn by hand: a page writes
  ``<!-- kugelwire:state-diagram CLIENT_TURN_TRANSITIONS -->`` and gets a Mermaid
  ``stateDiagram-v2`` of that table, followed by the same transitions as a table.
* Sphinx cross-reference roles left in docstrings (``:class:`X```) are shown as plain code in
  the API reference (``X``) instead of leaking the role name.

The diagram functions are plain functions so ``tests/docs`` can check them without mkdocs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeAlias

from kugelwire.protocol import _state

#: A transition table: ``(state, input) -> next state`` (the key types vary by table).
Table: TypeAlias = Mapping[tuple[Any, Any], Enum]

#: Tables a page may ask for, by their name in ``kugelwire.protocol._state``.
TABLES: dict[str, Table] = {
    "CLIENT_TURN_TRANSITIONS": _state.CLIENT_TURN_TRANSITIONS,
    "CLIENT_CONTEXT_TRANSITIONS": _state.CLIENT_CONTEXT_TRANSITIONS,
    "SERVER_TURN_TRANSITIONS": _state.SERVER_TURN_TRANSITIONS,
}

_MARKER = re.compile(r"^<!--\s*kugelwire:state-diagram\s+(\S+)\s*-->[ \t]*$", re.MULTILINE)
_EDGE = re.compile(r"^\s*(\w+) --> (\w+) : (.+)$")
_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(~?)([^<]+)</code>"
)


def _states(table: Table) -> list[Enum]:
    """Every state of the table's enum, in declaration order."""
    first_state: Enum = next(iter(table.values()))  # states and next states share one enum
    return list(type(first_state))


def mermaid_state_diagram(table: Table) -> str:
    """A Mermaid ``stateDiagram-v2`` of ``table`` (``(state, input) -> next state``).

    The initial state is the enum's first member; states without outgoing transitions are
    terminal. Inputs that lead from the same state to the same next state share one arrow
    (labels joined with ``, ``), in table order.
    """
    states = _states(table)
    edges: dict[tuple[Enum, Enum], list[str]] = defaultdict(list)
    for (state, event), new in table.items():
        edges[state, new].append(str(event.value))
    sources = {state for state, _ in table}
    lines = ["stateDiagram-v2", f"    [*] --> {states[0].name}"]
    for (state, new), labels in edges.items():
        lines.append(f"    {state.name} --> {new.name} : {', '.join(labels)}")
    lines.extend(f"    {state.name} --> [*]" for state in states if state not in sources)
    return "\n".join(lines) + "\n"


def parse_mermaid_edges(diagram: str) -> set[tuple[str, str, str]]:
    """``(state, input, next state)`` triples drawn in a diagram made by
    :func:`mermaid_state_diagram` (for the tests)."""
    found: set[tuple[str, str, str]] = set()
    for line in diagram.splitlines():
        match = _EDGE.match(line)
        if match is None or "[*]" in line:
            continue
        src, dst, labels = match.groups()
        found.update((src, label.strip(), dst) for label in labels.split(","))
    return found


def transition_table(table: Table) -> str:
    """The transitions as a Markdown table, in table order."""
    rows = ["| state | input | next state |", "|---|---|---|"]
    rows.extend(
        f"| `{state.name}` | `{event.value}` | `{new.name}` |"
        for (state, event), new in table.items()
    )
    return "\n".join(rows) + "\n"


def render_marker(name: str) -> str:
    """What replaces ``<!-- kugelwire:state-diagram NAME -->`` on a page."""
    try:
        table = TABLES[name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise ValueError(f"unknown transition table {name!r} (known: {known})") from None
    return (
        "```mermaid\n"
        + mermaid_state_diagram(table)
        + "```\n\n"
        + f'??? info "Every transition of `{name}` (generated)"\n\n'
        + "".join("    " + row + "\n" for row in transition_table(table).splitlines())
    )


def expand_markers(markdown: str) -> str:
    """Replace every state-diagram marker in a page's Markdown."""
    return _MARKER.sub(lambda m: render_marker(m.group(1)), markdown)


# -- mkdocs hook entry points --------------------------------------------------------------------
def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand_markers(markdown)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_role, html)
