"""The shared client core stays I/O-free; URL resolution and error mapping basics."""

from __future__ import annotations

import ast
import pathlib

import pytest

from kugelwire.errors import LocalProtocolError
from kugelwire.transports._core import ClientCore, resolve_url

CORE = pathlib.Path(__file__).resolve().parents[2] / "kugelwire" / "transports" / "_core.py"
FORBIDDEN = {"socket", "asyncio", "trio", "anyio", "threading", "selectors", "select", "ssl",
             "time", "concurrent"}


def test_core_imports_no_io() -> None:
    for node in ast.walk(ast.parse(CORE.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, name


def test_resolve_url() -> None:
    assert resolve_url("ws://h:1", "/ws/tts/stream") == "ws://h:1/ws/tts/stream?sdk=kugelwire"
    assert resolve_url("wss://h/ws/tts", "/ws/tts") == "wss://h/ws/tts"
    with pytest.raises(LocalProtocolError):
        resolve_url("ws://h/ws/tts/multi", "/ws/tts/stream")
    with pytest.raises(LocalProtocolError):
        resolve_url("ftp://h", "/ws/tts")


def test_connect_failure_maps_to_connection_failed() -> None:
    core = ClientCore("stream", "ws://127.0.0.1:9", now=0.0)
    assert core.data_to_send().startswith(b"GET /ws/tts/stream")
    core.connect_failed(ConnectionRefusedError(111, "refused"), 1.0)
    assert core.finished and type(core.error).__name__ == "ConnectionFailed"
    assert isinstance(core.error.__cause__, ConnectionRefusedError)
