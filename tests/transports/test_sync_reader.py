"""The blocking client's caller that waits for an event waits in select on the socket itself
(no hand-off from the I/O thread when the bytes come), and is woken for everything else that
changes: a cancel or a close from another thread, the server dropping the connection. In the
tests a lost wake-up hangs (tests/conftest.py turns the select's fallback timeout off), so each
of these fails by its bound rather than passing slowly."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kugelwire.errors import KugelwireError
from kugelwire.protocol.events import AudioChunk, Interrupted, TurnStarted
from kugelwire.server import ThreadedServer
from kugelwire.transports.sync import connect_stream
from tests.transports._hostile import HostileServer

KEY = "test-key"
BOUND = 5.0  # seconds: far more than any of these takes, far less than the suite's timeout


class _Consumer:
    """Iterates one turn in a thread; records its events and how it ended."""

    def __init__(self, turn: Any) -> None:
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.waiting = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(turn,), daemon=True)
        self._thread.start()

    def _run(self, turn: Any) -> None:
        try:
            for event in turn:
                self.events.append(event)
                if isinstance(event, TurnStarted):
                    self.waiting.set()  # the next one is waited for (a silent server)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.waiting.set()

    def join(self) -> None:
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the waiting caller was never woken"


def _waiting_on_socket(stream: Any) -> bool:
    return bool(stream._driver._reader is not None)


def _until(pred: Any) -> None:
    deadline = time.monotonic() + BOUND
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_waiting_caller_reads_the_first_audio_itself(server: ThreadedServer) -> None:
    with connect_stream(server.url, api_key=KEY, voice_id=1) as stream:
        core = stream._driver.core
        readers: list[bool] = []
        receive = core.receive_data

        def spy(data: bytes, now: float) -> None:
            receive(data, now)
            readers.append(threading.current_thread() is threading.main_thread())

        core.receive_data = spy
        by_caller = 0
        for _ in range(30):
            readers.clear()  # before the send: the answer may be read before it returns
            turn = stream.send_text("Hello there.", flush=True)
            assert turn is not None
            seen: list[bool] = []
            for event in turn:
                if type(event) is AudioChunk and not seen:
                    seen.append(readers[-1])  # who read the bytes of the first audio
            by_caller += seen[0]
        assert by_caller >= 5, f"the caller read the first audio itself in {by_caller} of 30"


def test_a_cancel_from_another_thread_wakes_a_caller_waiting_on_the_socket() -> None:
    with HostileServer("stall") as hostile, connect_stream(
        hostile.url, api_key=KEY, voice_id=1, cancel_timeout=0.3, close_timeout=0.3
    ) as stream:
        turn = stream.send_text("Hello there.", flush=True)
        consumer = _Consumer(turn)
        consumer.waiting.wait(BOUND)
        _until(lambda: _waiting_on_socket(stream))
        stream.cancel()
        consumer.join()
        assert consumer.error is None
        assert isinstance(consumer.events[-1], Interrupted)


def test_a_close_from_another_thread_wakes_a_caller_waiting_on_the_socket() -> None:
    with HostileServer("stall") as hostile:
        stream = connect_stream(hostile.url, api_key=KEY, voice_id=1, close_timeout=0.3)
        turn = stream.send_text("Hello there.", flush=True)
        consumer = _Consumer(turn)
        consumer.waiting.wait(BOUND)
        _until(lambda: _waiting_on_socket(stream))
        stream.close()
        closed_at = time.monotonic()
        consumer.join()
        assert consumer.ended_at is not None and consumer.ended_at - closed_at < 1.0
        assert consumer.error is not None or isinstance(consumer.events[-1], Interrupted)


def test_a_drop_while_the_caller_waits_on_the_socket_raises_at_once() -> None:
    with HostileServer("hang_up", hang_up_after=0.3) as hostile, connect_stream(
        hostile.url, api_key=KEY, voice_id=1
    ) as stream:
        turn = stream.send_text("Hello there.", flush=True)
        consumer = _Consumer(turn)
        consumer.waiting.wait(BOUND)
        _until(lambda: _waiting_on_socket(stream))
        consumer.join()
        assert isinstance(consumer.error, KugelwireError), consumer.error
        assert not _waiting_on_socket(stream)


@pytest.mark.parametrize("consumers", [2, 3])
def test_callers_waiting_on_one_connection_all_get_their_events(
    server: ThreadedServer, consumers: int
) -> None:
    """One of them waits on the socket; the others on the condition, woken by its reads."""
    from kugelwire.transports.sync import connect_multi

    with connect_multi(server.url, api_key=KEY, voice_id=1) as multi:
        contexts = [multi.create_context(f"c{i}") for i in range(consumers)]
        results: list[list[Any]] = [[] for _ in contexts]

        def consume(i: int) -> None:
            for event in contexts[i].until_final():
                results[i].append(event)

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
        for thread in threads:
            thread.start()
        for ctx in contexts:
            ctx.send_text("Hello there.", flush=True)
        for thread in threads:
            thread.join(BOUND)
            assert not thread.is_alive(), "a waiting caller was never woken"
        for events in results:
            assert any(type(e) is AudioChunk for e in events)
