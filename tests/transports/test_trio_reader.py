"""The trio client's consumer that waits for an event waits on the socket itself and reads and
parses what comes (no hand-off from the reader task when the bytes come), and is woken for
everything else that changes: a cancel or a close from another task, the server dropping the
connection, another consumer's events. The reader task leaves the socket alone meanwhile and
takes it back after. Each test is bounded (a lost wake-up fails by its bound)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from kugelwire.errors import KugelwireError
from kugelwire.protocol.events import AudioChunk, Interrupted, TurnStarted
from kugelwire.server import ThreadedServer
from kugelwire.transports.trio import connect_multi, connect_stream
from tests.transports._hostile import HostileServer

KEY = "test-key"
BOUND = 5.0  # seconds: far more than any of these takes, far less than the suite's timeout


def _holding(stream: Any) -> bool:
    """A consumer waits on the socket (and the reader task does not)."""
    driver = stream._driver
    return driver._holder is not None and driver._read_scope is None


async def _until(pred: Any) -> None:
    with trio.fail_after(BOUND):
        while not pred():
            await trio.sleep(0.005)


async def _consume(turn: Any, events: list[Any], waiting: trio.Event) -> None:
    async for event in turn:
        events.append(event)
        if isinstance(event, TurnStarted):
            waiting.set()  # the next one is waited for (a silent server)
    waiting.set()


def test_a_waiting_consumer_reads_the_first_audio_itself(server: ThreadedServer) -> None:
    async def main() -> None:
        async with await connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
            core = stream._driver.core
            readers: list[Any] = []
            receive = core.receive_data

            def spy(data: bytes, now: float) -> None:
                receive(data, now)
                readers.append(trio.lowlevel.current_task())

            core.receive_data = spy
            by_consumer = 0
            with trio.fail_after(BOUND * 4):
                for _ in range(30):
                    readers.clear()
                    turn = await stream.send_text("Hello there.", flush=True)
                    assert turn is not None
                    me = trio.lowlevel.current_task()
                    first: list[bool] = []
                    async for event in turn:
                        if type(event) is AudioChunk and not first:
                            first.append(readers[-1] is me)
                    assert first, "no audio"
                    by_consumer += first[0]
            # a turn's audio comes after its flush reached the server: the consumer waits
            # for it on the socket (the reader task could only win a rare race)
            assert by_consumer >= 20, f"the consumer read the first audio itself in {by_consumer}"
            # and the reader task has the socket back between turns (pings, a server close)
            await _until(lambda: stream._driver._read_scope is not None)

    trio.run(main)


def test_a_cancel_from_another_task_wakes_a_consumer_waiting_on_the_socket() -> None:
    async def main() -> None:
        with HostileServer("stall") as hostile:
            async with await connect_stream(
                hostile.url, api_key=KEY, voice_id=1, cancel_timeout=0.3, close_timeout=0.3
            ) as stream:
                turn = await stream.send_text("Hello there.", flush=True)
                events: list[Any] = []
                waiting = trio.Event()
                with trio.fail_after(BOUND):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_consume, turn, events, waiting)
                        await waiting.wait()
                        await _until(lambda: _holding(stream))
                        await stream.cancel()
                assert isinstance(events[-1], Interrupted), events

    trio.run(main)


def test_a_close_from_another_task_wakes_a_consumer_waiting_on_the_socket() -> None:
    async def main() -> None:
        with HostileServer("stall") as hostile:
            stream = await connect_stream(hostile.url, api_key=KEY, voice_id=1, close_timeout=0.3)
            turn = await stream.send_text("Hello there.", flush=True)
            events: list[Any] = []
            errors: list[BaseException] = []
            waiting = trio.Event()

            async def consume() -> None:
                try:
                    await _consume(turn, events, waiting)
                except KugelwireError as exc:
                    errors.append(exc)

            with trio.fail_after(BOUND):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume)
                    await waiting.wait()
                    await _until(lambda: _holding(stream))
                    with trio.fail_after(1.0):
                        await stream.close()
            assert errors or isinstance(events[-1], Interrupted), events

    trio.run(main)


def test_a_drop_while_the_consumer_waits_on_the_socket_raises_at_once() -> None:
    async def main() -> None:
        with HostileServer("hang_up", hang_up_after=0.3) as hostile:
            async with await connect_stream(hostile.url, api_key=KEY, voice_id=1) as stream:
                turn = await stream.send_text("Hello there.", flush=True)
                events: list[Any] = []
                errors: list[BaseException] = []
                waiting = trio.Event()

                async def consume() -> None:
                    try:
                        await _consume(turn, events, waiting)
                    except KugelwireError as exc:
                        errors.append(exc)

                with trio.fail_after(BOUND):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(consume)
                        await waiting.wait()
                        await _until(lambda: _holding(stream))
                assert errors, events  # the drop, as a typed error
                assert stream._driver._holder is None

    trio.run(main)


def test_a_cancelled_consumer_gives_the_socket_back() -> None:
    """The application cancels its wait: the reader task reads again (a ping, a close)."""

    async def main() -> None:
        with HostileServer("stall") as hostile:
            async with await connect_stream(
                hostile.url, api_key=KEY, voice_id=1, cancel_timeout=0.3, close_timeout=0.3
            ) as stream:
                turn = await stream.send_text("Hello there.", flush=True)
                events: list[Any] = []
                waiting = trio.Event()
                with trio.fail_after(BOUND):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_consume, turn, events, waiting)
                        await waiting.wait()
                        await _until(lambda: _holding(stream))
                        nursery.cancel_scope.cancel()
                    assert stream._driver._holder is None
                    await _until(lambda: stream._driver._read_scope is not None)

    trio.run(main)


@pytest.mark.parametrize("consumers", [2, 3])
def test_consumers_waiting_on_one_connection_all_get_their_events(
    server: ThreadedServer, consumers: int
) -> None:
    """One of them waits on the socket; the others on the signal, woken by its reads."""

    async def main() -> None:
        async with await connect_multi(server.url, api_key=KEY, voice_id=1) as multi:
            contexts = [await multi.create_context(f"c{i}") for i in range(consumers)]
            results: list[list[Any]] = [[] for _ in contexts]

            async def consume(i: int) -> None:
                async for event in contexts[i].until_final():
                    results[i].append(event)

            with trio.fail_after(BOUND):
                async with trio.open_nursery() as nursery:
                    for i in range(consumers):
                        nursery.start_soon(consume, i)
                    await trio.sleep(0.01)  # they wait (one of them on the socket)
                    for ctx in contexts:
                        await ctx.send_text("Hello there.", flush=True)
            for events in results:
                assert any(type(e) is AudioChunk for e in events), events

    trio.run(main)
