"""kugelwire.protocol and the server core are sans-IO: they import no I/O, concurrency or clock
modules."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

FORBIDDEN = {"socket", "asyncio", "trio", "anyio", "threading", "selectors", "time", "ssl",
             "concurrent", "multiprocessing", "subprocess", "datetime"}
PROTOCOL = pathlib.Path(__file__).resolve().parents[1] / "kugelwire" / "protocol"
#: the server role's sans-IO core (its adapters live beside it)
SERVER_CORE = PROTOCOL.parent / "server" / "_core.py"


def test_protocol_sources_import_nothing_forbidden() -> None:
    files = [*sorted(PROTOCOL.glob("*.py")), SERVER_CORE]
    assert SERVER_CORE.exists()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_core_loads_no_forbidden_module() -> None:
    code = (
        "import sys; before = set(sys.modules); import kugelwire.protocol, kugelwire.testing; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        f"bad = new & set({sorted(FORBIDDEN - {'time', 'datetime'})!r}); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
