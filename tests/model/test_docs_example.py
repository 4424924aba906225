"""Runs the example of docs/testing.md, so the documentation cannot rot."""

from __future__ import annotations

import pathlib
import re
from typing import Any

_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _example() -> str:
    text = _DOC.read_text(encoding="utf-8")
    section = text.split("## Example: testing a tiny SDK", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/testing.md lost its example"
    return match.group(1)


def test_docs_testing_example_runs() -> None:
    code = _example()
    namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
    exec(compile(code, str(_DOC), "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests, "the example defines no test"
    for test in tests:
        test()  # a hypothesis test: runs its examples


def test_docs_example_is_short() -> None:
    assert len(_example().strip().splitlines()) <= 45
