"""mkdocs hooks for the kugelwire documentation (wired up in ``mkdocs.yml``).

* State diagrams are generated from the core's transition tables
  (:mod:`kugelwire.protocol.state`), never drawn by hand: a page writes
  ``<!-- kugelwire:state-diagrams -->`` and gets a section per machine of the registry
  ``_state.MACHINES`` (title, description, a Mermaid ``stateDiagram-v2`` of the table, then
  the same transitions, with their actions, as a table); or it writes
  ``<!-- kugelwire:state-diagram CLIENT_TURN_TRANSITIONS -->`` for one table's diagram.
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

from kugelwire.protocol import state as _state

#: A transition table: ``(state, input) -> next state``, or h2-style
#: ``(state, input) -> (actions, next state)`` (the key types vary by table).
Table: TypeAlias = Mapping[tuple[Any, Any], Any]

#: Tables a page may ask for, by their name in ``kugelwire.protocol.state`` (the registry).
TABLES: dict[str, Table] = {machine.name: machine.table for machine in _state.MACHINES}

_MARKER = re.compile(r"^<!--\s*kugelwire:state-diagram\s+(\S+)\s*-->[ \t]*$", re.MULTILINE)
_ALL_MARKER = re.compile(r"^<!--\s*kugelwire:state-diagrams\s*-->[ \t]*$", re.MULTILINE)
_EDGE = re.compile(r"^\s*(\w+) --> (\w+) : (.+)$")
_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(~?)([^<]+)</code>"
)


def next_state(value: Any) -> Enum:
    """The next state of a table entry (a bare state, or ``(actions, next state)``)."""
    state: Enum = value[-1] if isinstance(value, tuple) else value
    return state


def actions(value: Any) -> tuple[Enum, ...]:
    """The actions of a table entry: none for a bare next state; one action or a tuple."""
    if not isinstance(value, tuple):
        return ()
    named = value[0]
    if named is None:
        return ()
    return tuple(named) if isinstance(named, tuple) else (named,)


def _states(table: Table) -> list[Enum]:
    """Every state of the table's enum, in declaration order."""
    # states and next states share one enum
    return list(type(next_state(next(iter(table.values())))))


def mermaid_state_diagram(table: Table) -> str:
    """A Mermaid ``stateDiagram-v2`` of ``table`` (``(state, input) -> next state``).

    The initial state is the enum's first member; states without outgoing transitions are
    terminal. Inputs that lead from the same state to the same next state share one arrow
    (labels joined with ``, ``), in table order.
    """
    states = _states(table)
    edges: dict[tuple[Enum, Enum], list[str]] = defaultdict(list)
    for (state, event), value in table.items():
        edges[state, next_state(value)].append(str(event.value))
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


def transition_table(table: Table, *, with_actions: bool = False) -> str:
    """The transitions as a Markdown table, in table order; ``with_actions`` adds a column
    with each transition's actions (h2-style tables)."""
    if not with_actions:
        rows = ["| state | input | next state |", "|---|---|---|"]
        rows.extend(
            f"| `{state.name}` | `{event.value}` | `{next_state(value).name}` |"
            for (state, event), value in table.items()
        )
        return "\n".join(rows) + "\n"
    rows = ["| state | input | next state | actions |", "|---|---|---|---|"]
    for (state, event), value in table.items():
        done = ", ".join(f"`{action.value}`" for action in actions(value)) or "-"
        rows.append(f"| `{state.name}` | `{event.value}` | `{next_state(value).name}` | {done} |")
    return "\n".join(rows) + "\n"


def render_marker(name: str) -> str:
    """What replaces ``<!-- kugelwire:state-diagram NAME -->`` on a page."""
    try:
        table = TABLES[name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise ValueError(f"unknown transition table {name!r} (known: {known})") from None
    with_actions = any(actions(value) for value in table.values())
    rows = transition_table(table, with_actions=with_actions).splitlines()
    return (
        "```mermaid\n"
        + mermaid_state_diagram(table)
        + "```\n\n"
        + f'??? info "Every transition of `{name}` (generated)"\n\n'
        + "".join("    " + row + "\n" for row in rows)
    )


def render_machines() -> str:
    """What replaces ``<!-- kugelwire:state-diagrams -->``: a section per registered machine."""
    return "\n".join(
        f"### {machine.title}\n\n{machine.doc}\n\n{render_marker(machine.name)}"
        for machine in _state.MACHINES
    )


def expand_markers(markdown: str) -> str:
    """Replace every state-diagram marker in a page's Markdown."""
    markdown = _ALL_MARKER.sub(lambda m: render_machines(), markdown)
    return _MARKER.sub(lambda m: render_marker(m.group(1)), markdown)


# -- mkdocs hook entry points --------------------------------------------------------------------
def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand_markers(markdown)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_role, html)
