"""Smoke test of the trio runner: a stream turn and a /ws/tts request over trio sockets."""

from __future__ import annotations

import pytest
import trio

from kugelwire.protocol._client import StreamClientSession, TTSClientSession, _ClientSession
from kugelwire.protocol._events import AudioChunk, ClientEvent, RequestFinal, TurnClosed
from kugelwire.protocol._ws import ClientConnection, ConnectionState
from kugelwire.server import trio_serve

KEY = "local-test-key"
pytestmark = pytest.mark.timeout(20)


async def _exchange(
    url: str, session: _ClientSession, start: object, done: type[ClientEvent]
) -> list[ClientEvent]:
    """Connect, let ``start(session, now)`` queue messages, read until a ``done`` event."""
    conn = ClientConnection(session, url + session.endpoint, api_key=KEY,
                            now=trio.current_time(), keepalive_interval=None)
    events: list[ClientEvent] = []
    stream = await trio.open_tcp_stream(*conn.address)
    async with stream:
        start(session, trio.current_time())  # type: ignore[operator]
        await stream.send_all(conn.data_to_send())
        while not any(isinstance(e, done) for e in events):
            assert conn.state is not ConnectionState.CLOSED
            data = await stream.receive_some(65536)
            conn.receive_data(data, trio.current_time())
            if out := conn.data_to_send():
                await stream.send_all(out)
            list(conn.events())
            events.extend(session.events())
    return events


def test_trio_runner_smoke() -> None:
    async def main() -> None:
        with trio.fail_after(15):
            async with trio_serve(api_key=KEY) as server:
                assert server.url == f"ws://127.0.0.1:{server.port}"

                def turn(s: StreamClientSession, now: float) -> None:
                    s.send_text("Hello from trio. Two sentences.", now, flush=True)

                events = await _exchange(server.url, StreamClientSession(voice_id=1), turn,
                                         TurnClosed)
                audio = [e for e in events if isinstance(e, AudioChunk)]
                closed = next(e for e in events if isinstance(e, TurnClosed))
                assert audio and closed.total_audio_seconds == pytest.approx(
                    sum(a.samples for a in audio) / 24000, abs=1e-5)

                def request(s: TTSClientSession, now: float) -> None:
                    s.request("One shot over trio.", now)

                events = await _exchange(server.url, TTSClientSession(voice_id=1), request,
                                         RequestFinal)
                final = next(e for e in events if isinstance(e, RequestFinal))
                assert final.total_samples == sum(
                    e.samples for e in events if isinstance(e, AudioChunk))
                await server.shutdown()
                assert server.connections == 0

    trio.run(main)
