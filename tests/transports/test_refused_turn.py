"""A stream turn the server refuses (no voice, or a voice outside its catalogue) ends at once
with a typed error instead of waiting for a ``final`` that never comes; the next turn flows."""

from __future__ import annotations

import asyncio
import time

import pytest

from kugelwire.errors import ServerErrorResponse
from kugelwire.protocol import (
    AudioChunk,
    ErrorCode,
    ServerError,
    StreamClientSession,
    TurnClosed,
    TurnStarted,
)
from kugelwire.pytest_plugin import LocalServer
from kugelwire.transports import asyncio as aio
from kugelwire.transports import sync


def test_session_ends_a_refused_turn_and_the_next_one_flows() -> None:
    session = StreamClientSession(voice_id=99999, language="en")
    first = session.send_text("Nobody speaks this.", 0.0, flush=True)
    session.messages_to_send()
    session.receive_message(
        '{"error": "Voice not found", "error_code": "NOT_FOUND", "code": 404}', 0.1)
    started, event = list(session.events())
    assert isinstance(started, TurnStarted) and started.turn == first
    assert isinstance(event, ServerError) and event.ends_turn and event.turn == first
    assert event.code is ErrorCode.NOT_FOUND and session.current_turn is None
    session.update_config(voice_id=1)
    second = session.send_text("Now with a voice.", 0.2, flush=True)
    assert second != first
    [frame] = session.messages_to_send()
    assert '"voice_id":1' in frame.replace(" ", "")
    session.receive_message('{"final": true, "total_audio_seconds": 0.0}', 0.3)
    session.receive_message('{"session_closed": true}', 0.3)
    closed = [e for e in session.events() if isinstance(e, TurnClosed)]
    assert [e.turn for e in closed] == [second]


def test_an_error_after_output_ends_no_turn() -> None:
    session = StreamClientSession(voice_id=1, language="en")
    turn = session.send_text("Hello.", 0.0, flush=True)
    session.messages_to_send()
    session.receive_message('{"generation_started": true, "chunk_id": 0, "text": "Hello."}', 0.1)
    session.receive_message(
        '{"error": "Voice not found", "error_code": "NOT_FOUND", "code": 404}', 0.2)
    errors = [e for e in session.events() if isinstance(e, ServerError)]
    assert errors and not errors[0].ends_turn and session.current_turn is None
    assert errors[0].turn == turn


def test_sync_client_refused_turn_raises_then_recovers(kugelwire_server: LocalServer) -> None:
    with sync.connect_stream(kugelwire_server.url, api_key=kugelwire_server.api_key,
                             voice_id=99999, language="en") as stream:
        started = time.monotonic()
        with pytest.raises(ServerErrorResponse) as info:
            stream.send_text("Nobody speaks this.", flush=True).collect()
        assert info.value.error.code is ErrorCode.NOT_FOUND
        # the next turn is refused too (same voice), on its own and at once: nothing waits
        with pytest.raises(ServerErrorResponse):
            stream.send_text("Still nobody.", flush=True).collect()
        assert time.monotonic() - started < 5
    with sync.connect_stream(kugelwire_server.url, api_key=kugelwire_server.api_key,
                             voice_id=1, language="en") as stream:
        events = stream.send_text("Now with a voice.", flush=True).collect()
        assert any(isinstance(e, AudioChunk) for e in events)
        assert isinstance(events[-1], TurnClosed)


def test_asyncio_client_refused_turn_raises(kugelwire_server: LocalServer) -> None:
    async def main() -> None:
        async with await aio.connect_stream(kugelwire_server.url,
                                            api_key=kugelwire_server.api_key,
                                            voice_id=99999, language="en") as stream:
            turn = await stream.send_text("Nobody speaks this.", flush=True)
            with pytest.raises(ServerErrorResponse):
                async for _ in turn:
                    pass

    asyncio.run(asyncio.wait_for(main(), 20))
