"""Random use of every client adapter, through its public API, against a real local server.

A hypothesis-generated *program* (send text / flush with the returned handle kept or dropped,
consume events from a turn or start a concurrent — possibly slow — consumer, cancel at any point,
sleep) runs on one adapter against :func:`kugelwire.server.run_in_thread` with the tone engine.
Afterwards a sentinel turn is spoken (every earlier turn is then over) and:

* every turn whose handle was kept saw exactly one terminal event (``TurnClosed`` or
  ``Interrupted``), last, and all its events from ``TurnStarted`` on (a dropped earlier handle
  loses nothing: see the regression example);
* a turn that ended with ``TurnClosed`` delivered audio in order, and its chunks' texts are the
  text sent (text conservation);
* a turn that ended with ``Interrupted`` handed out no audio after the ``cancel()`` that
  interrupted it returned;
* the buffered audio never exceeded ``max_buffered_bytes`` by more than one socket read, and
  nothing is left buffered at the end (dropped turns are discarded, kept ones consumed).

The async adapters run in an anyio blocking portal (a loop thread per backend), so each step is
one call into the loop and consumers run concurrently with the steps; the blocking adapter uses
consumer threads.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._events import (
    AudioChunk,
    GenerationStarted,
    Interrupted,
    TurnClosed,
    TurnStarted,
)
from kugelwire.server import ThreadedServer, run_in_thread
from kugelwire.synth import ToneEngine
from kugelwire.transports import anyio as kw_anyio
from kugelwire.transports import asyncio as kw_asyncio
from kugelwire.transports import sync as kw_sync
from kugelwire.transports import trio as kw_trio

pytestmark = pytest.mark.timeout(120)

EXAMPLES = int(__import__("os").environ.get("KW_EX", "300"))
CAP = 8 * 1024  # max_buffered_bytes: small, so slow consumers make reading pause
READ_SLACK = 65536  # one socket read of audio may land after the bound was reached
STEP_TIMEOUT = 5.0  # no single wait may take longer (a hang is a failure, not a timeout)
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "kilo")
_END = object()
_WAIT = object()


# -- the program ---------------------------------------------------------------------------------
text_op = st.tuples(
    st.just("send"),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    st.booleans(),  # ends a sentence (the server may start speaking before the flush)
    st.booleans(),  # flush=True
    st.booleans(),  # keep the returned handle
)
ops = st.one_of(
    text_op,
    st.tuples(st.just("flush"), st.booleans()),
    st.tuples(st.just("consume"), st.integers(1, 6)),
    st.tuples(st.just("consumer"), st.booleans()),  # slow?
    st.tuples(st.just("cancel")),
    st.tuples(st.just("sleep"), st.integers(0, 4)),
    st.tuples(st.just("drop")),
)
programs = st.lists(ops, max_size=12)

#: The trio loss: a handle dropped, then flush() while events arrive, the flush's handle kept.
LOSS = [
    ("send", ["alpha", "beta"], False, False, False),
    ("flush", True),
    ("consume", 6),
    ("send", ["gamma"], True, False, False),
    ("sleep", 3),
    ("flush", True),
    ("consumer", False),
]


@dataclass
class TurnRecord:
    number: int
    texts: list[str] = field(default_factory=list)
    flushed: bool = False
    handle: Any = None
    kept: bool = False  # a handle was kept at some point: its events are checked
    events: list[tuple[int, Any]] = field(default_factory=list)  # (epoch before pop, event)
    consumer: concurrent.futures.Future[None] | None = None
    cancelled_at: int | None = None  # epoch of the first cancel() that may have hit it
    ended: bool = False  # our view: the terminal event was seen


# -- adapters ------------------------------------------------------------------------------------
class Async:
    """An async adapter driven from this thread through a blocking portal."""

    def __init__(self, name: str, portal: BlockingPortal, url: str) -> None:
        self.name, self.portal, self.url = name, portal, url
        self._scoped: Any = None
        opts = {"voice_id": 1, "max_buffered_bytes": CAP}
        if name.startswith("anyio"):
            self._scoped = portal.wrap_async_context_manager(
                kw_anyio.connect_stream(url, **opts)
            )
            self.stream = self._scoped.__enter__()
        else:
            mod: Any = kw_asyncio if name == "asyncio" else kw_trio
            self.stream = portal.call(lambda: mod.connect_stream(url, **opts))

    @property
    def core(self) -> Any:
        return self.stream._core

    def send_text(self, text: str, flush: bool) -> Any:
        return self.portal.call(lambda: self.stream.send_text(text, flush=flush))

    def flush(self) -> Any:
        return self.portal.call(self.stream.flush)

    def cancel(self) -> None:
        self.portal.call(self.stream.cancel)

    def pop(self, handle: Any, timeout: float) -> Any:
        async def one() -> Any:
            with anyio.move_on_after(timeout):
                try:
                    return await handle.__anext__()
                except StopAsyncIteration:
                    return _END
            return _WAIT

        return self.portal.call(one)

    def consume(self, record: TurnRecord, epoch: list[int], slow: bool) -> Any:
        handle = record.handle

        async def run() -> None:
            with anyio.fail_after(STEP_TIMEOUT * 2):
                while True:
                    before = epoch[0]
                    try:
                        event = await handle.__anext__()
                    except StopAsyncIteration:
                        return
                    record.events.append((before, event))
                    if slow:
                        await anyio.sleep(0.002)

        return self.portal.start_task_soon(run)

    def sleep(self, seconds: float) -> None:
        self.portal.call(anyio.sleep, seconds)

    def close(self) -> None:
        if self._scoped is not None:
            self._scoped.__exit__(None, None, None)
        else:
            self.portal.call(self.stream.close)


class Sync:
    """The blocking adapter; consumers are threads."""

    name = "sync"

    def __init__(self, url: str) -> None:
        self.stream = kw_sync.connect_stream(url, voice_id=1, max_buffered_bytes=CAP)
        self._pool = concurrent.futures.ThreadPoolExecutor(4)

    @property
    def core(self) -> Any:
        return self.stream._core

    def send_text(self, text: str, flush: bool) -> Any:
        return self.stream.send_text(text, flush=flush)

    def flush(self) -> Any:
        return self.stream.flush()

    def cancel(self) -> None:
        self.stream.cancel()

    def pop(self, handle: Any, timeout: float) -> Any:
        # the blocking iterator has no timeout: pop only what is buffered or a finished turn
        driver = self.stream._driver
        deadline = time.monotonic() + timeout
        with driver.cond:
            while not handle._buf.events and not handle._buf.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return _WAIT
                driver.cond.wait(left)
        return next(handle, _END)

    def consume(self, record: TurnRecord, epoch: list[int], slow: bool) -> Any:
        handle = record.handle

        def run() -> None:
            for_ever = time.monotonic() + STEP_TIMEOUT * 2
            while time.monotonic() < for_ever:
                before = epoch[0]
                event = next(handle, _END)
                if event is _END:
                    return
                record.events.append((before, event))
                if slow:
                    time.sleep(0.002)
            raise AssertionError("consumer did not finish")

        return self._pool.submit(run)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self.stream.close()
        self._pool.shutdown(wait=True)


# -- the run -------------------------------------------------------------------------------------
STATS: dict[str, int] = {}


def _count(name: str) -> None:
    STATS[name] = STATS.get(name, 0) + 1


def check_memory(api: Any) -> None:
    core = api.core
    if core.reading_paused:
        _count("paused")
    assert core.buffered_bytes <= CAP + READ_SLACK, core.buffered_bytes


def run_program(api: Any, program: list[tuple[Any, ...]]) -> None:
    turns: dict[int, TurnRecord] = {}
    epoch = [0]
    open_turn: TurnRecord | None = None

    def record_for(handle: Any, text: str | None, flush: bool) -> TurnRecord:
        number = handle.number
        record = turns.get(number)
        if record is None:
            record = turns[number] = TurnRecord(number)
        if text is not None:
            record.texts.append(text)
        record.flushed = record.flushed or flush
        return record

    def keep(record: TurnRecord, handle: Any, yes: bool) -> None:
        if yes:
            if record.handle is not None:
                assert getattr(record.handle, "_buf", None) is handle._buf
            record.handle, record.kept = handle, True

    def kept_idle() -> TurnRecord | None:
        for record in turns.values():
            if record.handle is not None and record.consumer is None and not record.ended:
                return record
        return None

    for op in program:
        kind = op[0]
        if kind == "send":
            _, words, sentence, flush, keep_it = op
            text = " ".join(words) + ("." if sentence else "") + " "
            handle = api.send_text(text, flush)
            record = record_for(handle, text, flush)
            keep(record, handle, keep_it)
            del handle
            open_turn = None if flush else record
        elif kind == "flush":
            if open_turn is None:
                continue
            handle = api.flush()
            assert handle.number == open_turn.number
            record = record_for(handle, None, True)
            keep(record, handle, op[1])
            del handle
            open_turn = None
        elif kind == "consume":
            record = kept_idle()
            if record is None:
                continue
            for _ in range(op[1]):
                before = epoch[0]
                event = api.pop(record.handle, 0.05)
                if event is _WAIT:
                    break
                if event is _END:
                    record.ended = True
                    break
                record.events.append((before, event))
        elif kind == "consumer":
            record = kept_idle()
            if record is not None:
                record.consumer = api.consume(record, epoch, op[1])
        elif kind == "cancel":
            for record in turns.values():
                if record.cancelled_at is None:
                    record.cancelled_at = epoch[0] + 1
            api.cancel()
            epoch[0] += 1
            open_turn = None
        elif kind == "sleep":
            api.sleep(op[1] / 1000)
        elif kind == "drop":
            record = kept_idle()
            if record is not None:
                record.handle = None
        check_memory(api)

    # the sentinel: once it is over, every earlier turn is over too
    if open_turn is not None:
        handle = api.flush()
        keep(record_for(handle, None, True), handle, False)
        del handle
    handle = api.send_text("Sentinel turn.", True)
    sentinel = record_for(handle, "Sentinel turn.", True)
    sentinel.handle, sentinel.kept = handle, True
    del handle
    for record in turns.values():
        if record.handle is not None and record.consumer is None and not record.ended:
            record.consumer = api.consume(record, epoch, False)
    for record in turns.values():
        if record.consumer is not None:
            record.consumer.result(timeout=STEP_TIMEOUT * 3)
        check_memory(api)
    for record in turns.values():
        if record.kept:
            check_turn(record)
            if record.events:
                _count(type(record.events[-1][1]).__name__)
    for record in turns.values():
        record.handle = None
    assert api.core.buffered_events == 0, "events left buffered after every turn ended"


def check_turn(record: TurnRecord) -> None:
    events = [e for _, e in record.events]
    if record.consumer is None and not record.ended:
        return  # dropped before its end: only what was popped, nothing to conclude
    terminals = [e for e in events if isinstance(e, TurnClosed | Interrupted)]
    assert len(terminals) == 1, f"turn {record.number}: terminals {terminals}"
    assert events[-1] is terminals[0]
    assert isinstance(events[0], TurnStarted), f"turn {record.number} lost its start: {events[:3]}"
    assert all(getattr(e, "turn", record.number) == record.number for e in events)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    idx = [c.idx for c in chunks]
    assert idx == sorted(idx) and len(set(idx)) == len(idx), f"audio out of order: {idx}"
    if isinstance(terminals[0], TurnClosed):
        assert chunks, f"turn {record.number} closed without audio"
        spoken = "".join(e.text for e in events if isinstance(e, GenerationStarted))
        sent = "".join(record.texts)
        assert spoken.split() == sent.split(), (spoken, sent)
    else:
        assert record.cancelled_at is not None, f"turn {record.number} interrupted uncancelled"
        late = [c for before, c in record.events
                if isinstance(c, AudioChunk) and before >= record.cancelled_at]
        assert not late, f"turn {record.number}: audio after cancel() returned"


# -- fixtures and tests --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tone_server() -> Iterator[ThreadedServer]:
    with run_in_thread(engine=ToneEngine()) as handle:
        yield handle


@pytest.fixture(scope="module")
def portals() -> Iterator[dict[str, BlockingPortal]]:
    with start_blocking_portal("asyncio") as a, start_blocking_portal("trio") as t:
        yield {"asyncio": a, "trio": t, "anyio-asyncio": a, "anyio-trio": t}


ADAPTERS = ["asyncio", "trio", "anyio-asyncio", "anyio-trio", "sync"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_random_use(
    adapter: str, tone_server: ThreadedServer, portals: dict[str, BlockingPortal]
) -> None:
    examples = EXAMPLES
    runs = [0]

    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @example(LOSS)
    @given(programs)
    def run(program: list[tuple[Any, ...]]) -> None:
        api: Any
        if adapter == "sync":
            api = Sync(tone_server.url)
        else:
            api = Async(adapter, portals[adapter], tone_server.url)
        try:
            run_program(api, program)
        finally:
            api.close()
        assert api.stream.closed
        runs[0] += 1

    run()
    assert runs[0] >= examples, f"only {runs[0]} programs ran"


def test_the_loss_example_fails_without_the_fix(
    tone_server: ThreadedServer, portals: dict[str, BlockingPortal], monkeypatch: Any
) -> None:
    """The regression example catches the loss: with the old order (handle made after the
    write) the turn's start is discarded on every adapter."""
    from kugelwire.transports import _api, _tasks

    async def late_handle(self: Any, make: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await self.call(fn, *args, **kwargs)
        return make(result)

    monkeypatch.setattr(_api.SignalDriver, "call_handle", late_handle)
    monkeypatch.setattr(_tasks.TaskDriver, "call_handle", late_handle)  # trio's own
    api = Async("trio", portals["trio"], tone_server.url)
    try:
        with pytest.raises(AssertionError, match="lost its start"):
            run_program(api, LOSS)
    finally:
        api.close()


def teardown_module() -> None:
    print("random-use outcome counts:", STATS)
