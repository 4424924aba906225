"""The two clients of docs/websocket-libraries.md run, as printed, against a local server:
one turn, and a token stream that stalls so that the session's idle-guard timer (driven by the
example's deadline wait) ends the first turn itself."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kugelwire.server import ThreadedServer, run_in_thread

from ._blocks import blocks

pytestmark = pytest.mark.timeout(60)
KEY = "ws-libs key+/="
PAGE = "websocket-libraries.md"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with run_in_thread(api_key=KEY) as handle:
        yield handle


def _example(library: str, function: str = "speak") -> dict[str, Any]:
    (block,) = [b for b in blocks(PAGE, "python")
                if (f"import {library}" in b.source or f"from {library}" in b.source)
                and f"async def {function}(" in b.source]
    assert block.directive == ""
    for name in ("next_deadline", "handle_timeout", "messages_to_send", "receive_message",
                 "connection_lost"):
        assert name in block.source, name
    namespace: dict[str, Any] = {"__name__": f"example_{library}"}
    exec(compile(block.source, block.id, "exec"), namespace)
    return namespace


def _run(library: str, coro_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if library == "trio":
        import trio

        return trio.run(lambda: coro_fn(*args, **kwargs))
    return asyncio.run(coro_fn(*args, **kwargs))


def _tokens(library: str, parts: list[tuple[str, float]]) -> AsyncIterator[str]:
    async def gen() -> AsyncIterator[str]:
        for token, pause in parts:
            yield token
            if library == "trio":
                import trio

                await trio.sleep(pause)
            else:
                await asyncio.sleep(pause)

    return gen()


LIBRARIES = [("websockets", "asyncio"), ("trio_websocket", "trio")]


@pytest.mark.parametrize(("module", "library"), LIBRARIES)
def test_the_example_speaks_one_turn(
    module: str, library: str, server: ThreadedServer, tmp_path: Path
) -> None:
    pytest.importorskip(module)
    example = _example(module)
    out = tmp_path / "one.wav"
    tokens = _tokens(library, [(t, 0.01) for t in ["Hello", " there,", " one turn."]])
    seconds, turns = _run(library, example["speak"], server.url, tokens, str(out), api_key=KEY)
    assert turns == 1 and seconds > 0.3
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == 24000
        assert wav.getnframes() == pytest.approx(seconds * 24000)


@pytest.mark.parametrize(("module", "library"), LIBRARIES)
def test_the_example_drives_the_session_timers(
    module: str, library: str, server: ThreadedServer, tmp_path: Path
) -> None:
    """A 1 s stall with a 0.3 s idle guard: only handle_timeout can end turn 0 in time."""
    pytest.importorskip(module)
    example = _example(module)
    out = tmp_path / "two.wav"
    tokens = _tokens(library, [("First turn", 1.0), (" second turn.", 0.0)])
    seconds, turns = _run(library, example["speak"], server.url, tokens, str(out), api_key=KEY,
                          idle_flush_guard=0.3)
    assert turns == 2 and seconds > 0.3


@pytest.mark.parametrize(("module", "library"), LIBRARIES)
def test_a_refused_key_ends_the_example(
    module: str, library: str, server: ThreadedServer, tmp_path: Path
) -> None:
    pytest.importorskip(module)
    example = _example(module)
    tokens = _tokens(library, [("Hi.", 0.0)])
    with pytest.raises(Exception) as info:  # each library's own handshake error
        _run(library, example["speak"], server.url, tokens, str(tmp_path / "x.wav"),
             api_key="wrong")
    assert "401" in repr(info.value) or "401" in str(info.value.__cause__) or any(
        "401" in repr(e) for e in getattr(info.value, "exceptions", ()))


def test_the_multi_example_keeps_its_contexts_alive(tmp_path: Path) -> None:
    """Contexts time out after 0.5 s on this server and the example pauses 1 s between lines:
    only the session's keep-alive timer, driven by the example's loop, keeps them open."""
    pytest.importorskip("websockets")
    from kugelwire.protocol import ServerLimits

    example = _example("websockets", "dialogue")
    lines = [("narrator", "The door creaked open."), ("hero", "Is anybody there?"),
             ("narrator", "Nobody answered.")]
    with run_in_thread(api_key=KEY, limits=ServerLimits(context_timeout_s=0.5)) as srv:
        seconds, timeouts, finals = asyncio.run(example["dialogue"](
            srv.url, lines, api_key=KEY, pause=1.0, keepalive_interval=0.2))
    assert timeouts == 0 and finals >= len(lines)
    assert seconds["narrator"] > 0.5 and seconds["hero"] > 0.3


def test_without_keep_alives_the_contexts_time_out(tmp_path: Path) -> None:
    """The control: the same dialogue without the timer loses its contexts."""
    pytest.importorskip("websockets")
    from kugelwire.protocol import LocalProtocolError, ServerLimits

    example = _example("websockets", "dialogue")
    lines = [("narrator", "The door creaked open."), ("hero", "Is anybody there?")]
    limits = ServerLimits(context_timeout_s=0.5)
    with run_in_thread(api_key=KEY, limits=limits) as srv, pytest.raises(LocalProtocolError):
        # sending to a context that timed out
        asyncio.run(example["dialogue"](srv.url, lines, api_key=KEY, pause=1.0,
                                        keepalive_interval=None))
