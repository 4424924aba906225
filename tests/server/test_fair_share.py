"""Sans-IO tests of the server core's fairness: engine slots shared across connections (then
contexts), and one connection's input handled a slice per event-loop turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kugelwire.server._core import ServerCore, ServerOptions
from tests.faults._util import client_frame, upgrade_request

KEY = "fair-key"


class _Engine:
    """Many pieces per chunk, no I/O."""

    max_concurrency = 4

    def synthesize(self, chunk: Any, params: Any, cancel: Any) -> Iterator[bytes]:
        for _ in range(50):
            yield b"\x01\x00" * 480


def _messages(core: ServerCore, path: str) -> Any:
    conn = core.connect_messages(0.0)
    assert conn.accept(path, f"api_key={KEY}", [], 0.0, denial=True).accepted
    return conn


def test_twenty_contexts_do_not_take_every_slot_ahead_of_another_connections_turn() -> None:
    """A connection with 20 busy contexts holds all 4 slots; another connection's single turn
    must get the next free slot (before: the busy connection, first in the ring, took it)."""
    core = ServerCore(ServerOptions(engine=_Engine(), api_key=KEY, ping_interval=None))
    multi = _messages(core, "/ws/tts/multi")
    for i in range(20):
        for msg in ({"text": " ", "context_id": f"c{i}", "voice_settings": {"voice_id": 1}},
                    {"text": "Hello there. ", "context_id": f"c{i}"},
                    {"flush": True, "context_id": f"c{i}"}):
            multi.receive_text(json.dumps(msg), 0.0)
    running = core.take_jobs()
    assert len(running) == 4 and all(job.peer is multi for job in running)
    stream = _messages(core, "/ws/tts/stream")
    stream.receive_text(json.dumps({"text": "Hi there. ", "voice_id": 1}), 0.0)
    stream.receive_text(json.dumps({"flush": True}), 0.0)
    assert core.take_jobs() == []  # every slot is busy
    job = running.pop(0)
    core.job_done(job, job.advance(), 0.001, None, 0.01)
    taken = core.take_jobs()
    assert [j.peer for j in taken] == [stream]
    # and the 20 contexts still take turns among themselves on the other slots
    seen: set[str | None] = set()
    for _ in range(40):
        job = running.pop(0)
        core.job_done(job, job.advance(), 0.001, None, 0.02)
        new = core.take_jobs()
        running += [j for j in new if j.peer is multi]
        seen.update(j.request.ref.context_id for j in new if j.peer is multi)
    assert len(seen) >= 15, seen


def test_a_flood_of_tiny_frames_is_handled_one_slice_per_turn() -> None:
    """64 KiB of 8-byte ``{}`` frames in one read: the core handles ``frame_burst`` frames,
    pauses reading and asks to be called back ``frame_burst_pause`` later for the rest, so
    the adapter serves other connections in between (before: all 8,192 at once)."""
    options = ServerOptions(api_key=KEY, ping_interval=None)
    core = ServerCore(options)
    conn = core.connect(0.0)
    conn.receive_data(upgrade_request("/ws/tts/stream", key=KEY), 0.0)
    conn.data_to_send()
    conn.report_buffered(0)
    assert conn.reading
    flood = client_frame(b"{}", opcode=0x1) * 8192
    conn.receive_data(flood, 1.0)
    assert not conn.reading  # the rest is not read before the loop has served the others
    due = conn.next_deadline()
    assert due is not None and due == 1.0 + options.frame_burst_pause + 1e-6
    conn.handle_timeout(1.0 + options.frame_burst_pause / 2)  # not due yet: nothing read
    assert conn.next_deadline() == due
    turns = 1
    now = 1.0
    while not conn.reading:
        now = conn.next_deadline() or now
        conn.handle_timeout(now)
        turns += 1
    assert turns == 8192 // options.frame_burst
    assert now >= 1.0 + (turns - 1) * options.frame_burst_pause
    assert conn.next_deadline() is None or conn.next_deadline() > now + 1  # idle again
    # and it still works: a turn after the flood is spoken
    conn.receive_data(client_frame(json.dumps({"text": "Hi. ", "voice_id": 1,
                                               "flush": True}).encode()), now)
    assert core.take_jobs()


def _stream(core: ServerCore) -> Any:
    return _messages(core, "/ws/tts/stream")


def _send(conn: Any, **msg: Any) -> list[dict[str, Any]]:
    conn.receive_text(json.dumps(msg), 0.0)
    out = [json.loads(m) for m in conn.messages_to_send()]
    conn.report_buffered(0)  # written
    return out


def _errors(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["error_code"], f["code"]) for f in frames if "error_code" in f]


def test_per_connection_cap_on_text_and_unsent_audio() -> None:
    """``max_connection_buffer``: a text frame that would take one connection's held text +
    unsent bytes over it is refused with RATE_LIMITED; what was accepted before stays."""
    core = ServerCore(ServerOptions(engine=_Engine(), api_key=KEY, ping_interval=None,
                                    max_connection_buffer=1000))
    conn = _stream(core)
    assert _errors(_send(conn, text="a" * 600, voice_id=1)) == []
    assert _errors(_send(conn, text="b" * 600)) == [("RATE_LIMITED", 429)]
    assert _errors(_send(conn, text="c" * 300)) == []  # under the cap: accepted
    session = conn.session
    assert session.held_chars() == 900
    # unsent bytes count too: the adapter holds 200 bytes it could not write yet
    conn.report_buffered(200)
    assert _errors(_send(conn, text="d" * 1)) == [("RATE_LIMITED", 429)]
    conn.report_buffered(0)
    _send(conn, flush=True)
    spoken = []
    for _ in range(1000):
        jobs = core.take_jobs()
        if not jobs:
            break
        for job in jobs:
            spoken.append(job.request.chunk.text)
            item = job.advance()
            while item is not None:
                item = job.advance()
            core.job_done(job, None, 0.001, None, 0.0)
            conn.messages_to_send()
            conn.report_buffered(0)
    assert "".join(spoken).replace(" ", "") == "a" * 600 + "c" * 300  # nothing accepted lost
    assert session.held_chars() == 0
    assert core.memory == 0


def test_global_memory_budget_sheds_new_work_then_recovers() -> None:
    """``memory_budget``: above it a new turn (or context) is refused with RATE_LIMITED and a
    new connection is closed with 1013; text of turns under way still goes in; once the held
    text is spoken, new work is accepted again."""
    core = ServerCore(ServerOptions(engine=_Engine(), api_key=KEY, ping_interval=None,
                                    memory_budget=1300))
    a, b = _stream(core), _stream(core)
    multi = _messages(core, "/ws/tts/multi")
    assert _errors(_send(a, text="a" * 1000, voice_id=1)) == []
    assert _errors(_send(a, text="a" * 400)) == []  # not new work: only the connection's cap
    assert core.memory == 1400
    assert _errors(_send(b, text="b" * 200, voice_id=1)) == [("RATE_LIMITED", 429)]
    frames = _send(multi, text="x" * 200, context_id="c", voice_settings={"voice_id": 1})
    assert _errors(frames) == [("RATE_LIMITED", 429)], frames
    assert _errors(_send(a, text="more")) == []  # the turn under way keeps going
    assert core.memory == 1404
    late = core.connect(0.0)
    late.receive_data(upgrade_request("/ws/tts/stream", key=KEY), 0.0)
    out = late.data_to_send()
    assert out.startswith(b"HTTP/1.1 101") and b"\x88\x02\x03\xf5" in out  # close 1013
    a.connection_lost(1000, 0.0)  # a's text is gone with it
    while core.take_jobs():
        pass
    assert core.memory == 0
    assert _errors(_send(b, text="b" * 200, voice_id=1)) == []
