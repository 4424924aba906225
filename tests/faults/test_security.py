"""The API key: compared in constant time, never logged or echoed, URL-encoded by the client,
accepted as a query parameter or as ``Authorization: Bearer`` by the server, and sendable either
way by the client."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from typing import Any
from urllib.parse import quote

import pytest

from kugelwire.errors import AuthenticationError, ConnectionFailed
from kugelwire.protocol import _ws
from kugelwire.protocol._client import StreamClientSession
from kugelwire.protocol._events import TurnClosed
from kugelwire.protocol._server import StreamServerSession
from kugelwire.protocol._ws import ClientConnection, ConnectionState, ServerConnection
from kugelwire.server import serve
from kugelwire.transports.asyncio import connect_stream

from ._util import client_frame, must, run, text_frame, upgrade_request

pytestmark = pytest.mark.timeout(20)

SECRET = "sk-Sup3rSecret/+&=?#%-ключ"  # reserved and non-ASCII characters on purpose
WRONG = "sk-WrongGuess-0123456789"


# -- constant time --------------------------------------------------------------------------------
def test_every_candidate_is_compared_with_hmac_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []

    class Spy:
        @staticmethod
        def compare_digest(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return hmac.compare_digest(a, b)

    monkeypatch.setattr(_ws, "hmac", Spy)
    key = SECRET.encode()

    def upgrade(target: str, extra: str = "") -> ServerConnection:
        conn = ServerConnection(lambda path: StreamServerSession(), api_key=SECRET, now=0.0)
        conn.receive_data(
            upgrade_request(target)[:-2] + extra.encode("utf-8") + b"\r\n", 0.0
        )
        return conn

    # a wrong query key *and* the right Bearer: both are compared, no early exit
    conn = upgrade(f"/ws/tts/stream?api_key={WRONG}",
                   "Authorization: Bearer " + SECRET + "\r\n")
    assert conn.state is ConnectionState.OPEN
    assert [b for _, b in calls] == [key] * len(calls)
    assert WRONG.encode() in [a for a, _ in calls] and key in [a for a, _ in calls]
    # the right key first does not skip the later (wrong) candidate either
    calls.clear()
    conn = upgrade(f"/ws/tts/stream?api_key={quote(SECRET, safe='')}",
                   "Authorization: Bearer " + WRONG + "\r\n")
    assert conn.state is ConnectionState.OPEN
    assert len(calls) == 3  # form-decoded and percent-decoded query value, then the header
    calls.clear()
    conn = upgrade("/ws/tts/stream?api_key=" + WRONG)
    assert conn.state is ConnectionState.CLOSED and len(calls) == 2


# -- never logged, never echoed -------------------------------------------------------------------
async def _raw_exchange(port: int, request: bytes, frames: bytes = b"", wait: float = 0.3) -> bytes:
    """Send an upgrade request (and frames), return every byte the server sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    if frames:
        head = await reader.readuntil(b"\r\n\r\n")
        data += head
        writer.write(frames)
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                break
            data += chunk
    except asyncio.TimeoutError:
        pass
    writer.close()
    return data


def _contains_key(blob: bytes | str, *keys: str) -> bool:
    text = blob if isinstance(blob, str) else blob.decode("utf-8", "replace")
    for key in keys:
        forms = {key, quote(key, safe=""), quote(key)}
        if any(form in text for form in forms):
            return True
    return False


@pytest.mark.parametrize("auth_failure", ["http", "close"])
def test_the_key_is_never_logged_or_echoed(
    caplog: pytest.LogCaptureFixture, auth_failure: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, DEBUG and up
    quoted = quote(SECRET, safe="")
    sent: list[bytes] = []

    async def main() -> None:
        async with serve(api_key=SECRET, auth_failure=auth_failure) as server:  # type: ignore[arg-type]
            port = server.port
            # failed auth: wrong query key, wrong Bearer, no key at all
            sent.append(await _raw_exchange(
                port, upgrade_request(f"/ws/tts/stream?api_key={WRONG}")))
            sent.append(await _raw_exchange(
                port, upgrade_request("/ws/tts/stream")[:-2]
                + f"Authorization: Bearer {WRONG}\r\n\r\n".encode()))
            sent.append(await _raw_exchange(port, upgrade_request("/ws/tts/multi")))
            # the right key on an unknown path, and on a plain HTTP request
            sent.append(await _raw_exchange(
                port, upgrade_request(f"/ws/nope?api_key={quoted}")))
            sent.append(await _raw_exchange(
                port, f"GET /ws/tts?api_key={quoted} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
            # success, then frames that provoke every kind of error
            bad_frames = b"".join([
                client_frame(b'{"text": "Hi"'),
                text_frame({"text": 5}),
                text_frame({"update_settings": {"voice_id": SECRET}}),
                text_frame({"voice_id": [SECRET]}),
                text_frame({"text": "Hi", "sample_rate": 12345}),
                text_frame({"voice_id": 1, "text": "<prosody rate=\"x\">Hi"}),
                text_frame({"voice_id": SECRET, "text": "Hi"}),  # NOT_FOUND, key not echoed
                client_frame(b"\x00\x01", opcode=0x2),
                text_frame({"voice_id": 1, "text": "Hello there.", "flush": True}),
            ])
            for target, extra in ((f"/ws/tts/stream?api_key={quoted}", b""),
                                  ("/ws/tts/stream", f"Authorization: Bearer {SECRET}\r\n"
                                   .encode())):
                request = upgrade_request(target)[:-2] + extra + b"\r\n"
                data = await _raw_exchange(port, request, bad_frames, wait=1.0)
                assert data.startswith(b"HTTP/1.1 101"), data[:100]
                assert b"VALIDATION_ERROR" in data and b'"audio"' in data
                assert b'"error_code":"NOT_FOUND"' in data
                sent.append(data)
                # invalid UTF-8: close 1007, whose reason quotes the decoder, not the request
                data = await _raw_exchange(port, request, client_frame(b"\xff\xfe"))
                assert b"\x88" in data
                sent.append(data)

    run(main)
    assert all(sent)
    if auth_failure == "http":
        assert sent[0].startswith(b"HTTP/1.1 401") and b"UNAUTHORIZED" in sent[0]
    else:
        assert sent[0].startswith(b"HTTP/1.1 101") and b"UNAUTHORIZED" in sent[0]
    for data in sent:
        assert not _contains_key(data, SECRET, WRONG), data[:300]
    records = caplog.records
    assert any(r.levelno == logging.DEBUG for r in records)  # DEBUG really was captured
    assert any("rejected" in r.getMessage() for r in records)
    for record in records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        assert not _contains_key(text, SECRET, WRONG), text


def test_client_errors_and_logs_do_not_carry_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]

    async def main() -> None:
        async with serve(api_key=SECRET) as server:
            with pytest.raises(AuthenticationError) as auth:
                await connect_stream(server.url, api_key=WRONG)
            with pytest.raises(ConnectionFailed) as refused:
                await connect_stream(f"ws://127.0.0.1:{free_port}", api_key=SECRET,
                                     connect_timeout=2)
            for exc in (auth.value, refused.value):
                assert not _contains_key(str(exc) + repr(exc) + repr(exc.__cause__),
                                         SECRET, WRONG)

    run(main)
    for record in caplog.records:
        assert not _contains_key(record.getMessage() + repr(record.args), SECRET, WRONG)


# -- on the wire ----------------------------------------------------------------------------------
def _request_head(**kwargs: Any) -> bytes:
    conn = ClientConnection(StreamClientSession(), "ws://127.0.0.1:9/ws/tts/stream", now=0.0,
                            **kwargs)
    return conn.data_to_send()


def test_client_url_encodes_the_key_in_the_query() -> None:
    head = _request_head(api_key=SECRET)
    target = head.split(b" ")[1].decode("ascii")
    assert "api_key=" + quote(SECRET, safe="") in target
    assert b"authorization" not in head.lower()
    # and the server decodes it back to the same key
    conn = ServerConnection(lambda path: StreamServerSession(), api_key=SECRET, now=0.0)
    conn.receive_data(head, 0.0)
    assert conn.state is ConnectionState.OPEN


def test_client_sends_bearer_when_asked_and_the_server_accepts_it() -> None:
    head = _request_head(api_key=SECRET, auth="bearer")
    assert b"api_key" not in head.split(b"\r\n")[0]
    assert b"\r\nauthorization: Bearer " + SECRET.encode() + b"\r\n" in head
    conn = ServerConnection(lambda path: StreamServerSession(), api_key=SECRET, now=0.0)
    conn.receive_data(head, 0.0)
    assert conn.state is ConnectionState.OPEN


@pytest.mark.parametrize("header", ["Authorization: Bearer {k}", "authorization: bearer {k}",
                                    "AUTHORIZATION:   BEARER   {k}  "])
def test_server_accepts_bearer_spellings(header: str) -> None:
    key = "plain-ascii-key"
    conn = ServerConnection(lambda path: StreamServerSession(), api_key=key, now=0.0)
    conn.receive_data(
        upgrade_request("/ws/tts/stream")[:-2] + header.format(k=key).encode() + b"\r\n\r\n", 0.0
    )
    assert conn.state is ConnectionState.OPEN, conn.data_to_send()[:80]


@pytest.mark.parametrize("auth", ["query", "bearer"])
def test_public_client_with_an_awkward_key_both_ways(auth: str) -> None:
    async def main() -> None:
        async with serve(api_key=SECRET) as server, await connect_stream(
            server.url, api_key=SECRET, auth=auth, voice_id=1  # type: ignore[arg-type]
        ) as stream:
            turn = must(await stream.send_text("Authorised.", flush=True))
            assert isinstance((await turn.collect())[-1], TurnClosed)

    run(main)
