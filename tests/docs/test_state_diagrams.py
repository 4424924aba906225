"""The state diagrams of docs/concepts.md are generated from the core's transition tables."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from enum import Enum
from types import ModuleType
from typing import Any

import pytest

from kugelwire.protocol import _state

from ._blocks import DOCS

TABLES: dict[str, Mapping[tuple[Any, Any], Any]] = {m.name: m.table for m in _state.MACHINES}


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kugelwire_docs_hooks", DOCS / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _next(value: Any) -> Enum:
    """A table entry's next state: a bare state, or h2-style ``(actions, next state)``."""
    return value[-1] if isinstance(value, tuple) else value  # type: ignore[no-any-return]


def _triples(table: Mapping[tuple[Any, Any], Any]) -> set[tuple[str, str, str]]:
    return {(s.name, str(i.value), _next(n).name) for (s, i), n in table.items()}


def test_the_registry_holds_every_machine_by_its_table_name() -> None:
    names = [m.name for m in _state.MACHINES]
    assert len(names) == len(set(names))
    for name in (
        "CLIENT_TURN_TRANSITIONS",
        "CLIENT_CONTEXT_TRANSITIONS",
        "SERVER_TURN_TRANSITIONS",
        "SERVER_CONTEXT_TRANSITIONS",
        "SERVER_REQUEST_TRANSITIONS",
    ):
        assert name in names
    for machine in _state.MACHINES:
        assert getattr(_state, machine.name) is machine.table
        assert machine.title and machine.doc


@pytest.mark.parametrize("name", sorted(TABLES))
def test_diagram_lists_every_transition_of_the_table(name: str) -> None:
    table = TABLES[name]
    diagram = hooks.mermaid_state_diagram(table)
    assert diagram.startswith("stateDiagram-v2\n")
    assert hooks.parse_mermaid_edges(diagram) == _triples(table)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_diagram_marks_initial_and_terminal_states(name: str) -> None:
    table = TABLES[name]
    diagram = hooks.mermaid_state_diagram(table)
    first: Enum = _next(next(iter(table.values())))
    states = list(type(first))
    assert f"[*] --> {states[0].name}\n" in diagram
    sources = {s for s, _ in table}
    terminal = {m.group(1) for m in re.finditer(r"^\s*(\w+) --> \[\*\]$", diagram, re.M)}
    assert terminal == {s.name for s in states if s not in sources}
    for state in states:  # every state is drawn
        assert re.search(rf"\b{state.name}\b", diagram)


def test_terminal_states_match_the_core() -> None:
    diagram = hooks.mermaid_state_diagram(_state.CLIENT_TURN_TRANSITIONS)
    terminal = {m.group(1) for m in re.finditer(r"^\s*(\w+) --> \[\*\]$", diagram, re.M)}
    assert terminal == {s.name for s in _state.TERMINAL_TURN_STATES}


def test_a_changed_table_changes_the_diagram() -> None:
    table = dict(_state.CLIENT_TURN_TRANSITIONS)
    del table[_state.ClientTurnState.OPEN, _state.TurnInput.FLUSH]
    edges = hooks.parse_mermaid_edges(hooks.mermaid_state_diagram(table))
    assert ("OPEN", "flush", "FLUSHED") not in edges
    assert ("OPEN", "close", "FLUSHED") in edges


def test_transition_table_rows() -> None:
    rows = hooks.transition_table(_state.SERVER_TURN_TRANSITIONS).splitlines()[2:]
    assert len(rows) == len(_state.SERVER_TURN_TRANSITIONS)
    assert "| `IDLE` | `text` | `ACTIVE` |" in rows


def test_concepts_page_draws_every_registered_machine() -> None:
    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    assert "<!-- kugelwire:state-diagrams -->" in page
    expanded = hooks.expand_markers(page)
    assert "kugelwire:state-diagram" not in expanded
    assert expanded.count("```mermaid\nstateDiagram-v2\n") == len(TABLES)
    for table in TABLES.values():
        for line in hooks.mermaid_state_diagram(table).splitlines():
            assert line in expanded
    for machine in _state.MACHINES:
        assert f"### {machine.title}\n\n{machine.doc}\n" in expanded
        assert f"Every transition of `{machine.name}`" in expanded


def test_one_marker_still_draws_one_table() -> None:
    out = hooks.expand_markers("<!-- kugelwire:state-diagram SERVER_TURN_TRANSITIONS -->\n")
    assert out.count("stateDiagram-v2") == 1
    assert "| `ACTIVE` | `flush` | `DRAINING` | `flush` |" in out


def test_h2_style_rows_list_their_actions_in_order() -> None:
    rows = hooks.transition_table(
        _state.SERVER_CONTEXT_TRANSITIONS, with_actions=True
    ).splitlines()[2:]
    assert len(rows) == len(_state.SERVER_CONTEXT_TRANSITIONS)
    assert "| `OPEN` | `timeout` | `CLOSED` | `timed_out`, `drop`, `closed` |" in rows
    assert "| `IDLE` | `keep_alive` | `IDLE` | - |" in rows


def test_unknown_table_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown transition table"):
        hooks.expand_markers("<!-- kugelwire:state-diagram NO_SUCH_TABLE -->\n")


def test_sphinx_roles_are_rendered_as_code() -> None:
    html = ":class:<code>~kugelwire.errors.ConnectionFailed</code> and :meth:<code>flush</code>"
    assert hooks.on_page_content(html) == "<code>ConnectionFailed</code> and <code>flush</code>"
