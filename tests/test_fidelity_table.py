"""``docs/fidelity.md`` is executable: every row of its rejection table is replayed, strict and
lenient, against a byte-level :class:`ServerConnection` routed the way a tone-engine server
routes (the engine's catalogue, the REST handler), with no engine attached.

The cell syntax is the bad-input table's (``tests/test_bad_input_table.py``). Every HTTP answer
must carry the connection's ``x-request-id`` and every error frame its ``request_id``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kugelwire.protocol._ws import ConnectionState, ServerConnection
from kugelwire.server import ServerOptions
from kugelwire.synth import ToneEngine
from tests.test_bad_input_table import (
    encode_frames,
    expected_output,
    parse_server_bytes,
    split_http,
    upgrade_request,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
KEY = "fidelity-test-key"
REQUEST_ID = "req_fidelity"


@dataclass(frozen=True)
class Row:
    trigger: str
    endpoint: str
    frame: str
    response: str
    fatal: str
    close: str
    lenient: str


def _cell(text: str) -> str:
    text = text.strip()
    if text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    return text.replace("\\|", "|")


def parse_table(markdown: str) -> list[Row]:
    rows: list[Row] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("| Trigger |"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if rows:
                break
            continue
        if set(line.replace("|", "").strip()) <= {"-", ":", " "}:
            continue
        cells = [_cell(c) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 7, f"malformed row ({len(cells)} cells): {line}"
        rows.append(Row(*cells))
    return rows


ROWS = parse_table(DOC.read_text(encoding="utf-8"))


def _headers(head: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.strip().lower()] = value.strip()
    return out


def run(row: Row, *, lenient: bool) -> tuple[list[Any], ConnectionState]:
    options = ServerOptions(engine=ToneEngine(), lenient=lenient)
    now = 1000.0
    conn = ServerConnection(
        options.new_session, api_key=KEY, now=now, rest_handler=options.rest_handler(),
        request_id=REQUEST_ID,
    )
    if row.frame.startswith("GET "):
        head, _, extra = row.frame[4:].replace("KEY", KEY).partition(" + ")
        if extra == "no-upgrade":
            request = f"GET {head} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        else:
            request = upgrade_request(head)
        conn.receive_data(request, now)
        data = conn.data_to_send()
        status, raw_head, body = split_http(data)
        assert _headers(raw_head).get(b"x-request-id") == REQUEST_ID.encode(), raw_head
        return [("http", status, json.loads(body) if body else None)], conn.state
    conn.receive_data(upgrade_request(f"{row.endpoint}?api_key={KEY}"), now)
    status, raw_head, _ = split_http(conn.data_to_send())
    assert status == 101
    assert _headers(raw_head).get(b"x-request-id") == REQUEST_ID.encode()
    conn.receive_data(encode_frames(row.frame), now)
    output = parse_server_bytes(conn.data_to_send())
    for item in output:
        if isinstance(item, dict) and "error" in item:
            assert item.pop("request_id") == REQUEST_ID, item
    return output, conn.state


def test_the_table_covers_the_service_rejections() -> None:
    codes = {json.loads(c)["error_code"] for r in ROWS for c in r.response.split(" ; ")
             if c.startswith("{") and "error_code" in c}
    assert {"MISSING_VOICE_ID", "NOT_FOUND", "VALIDATION_ERROR"} <= codes
    assert len({r.trigger for r in ROWS}) == len(ROWS), "triggers must be unique"


@pytest.mark.parametrize("row", ROWS, ids=[r.trigger for r in ROWS])
def test_strict(row: Row) -> None:
    output, state = run(row, lenient=False)
    assert output == expected_output(row.response)
    closes = [item[1] for item in output if isinstance(item, tuple) and item[0] == "close"]
    assert closes == ([] if row.close == "-" else [int(row.close)])
    assert (state is not ConnectionState.OPEN) == (row.fatal == "yes"), state


@pytest.mark.parametrize("row", ROWS, ids=[r.trigger for r in ROWS])
def test_lenient(row: Row) -> None:
    output, _ = run(row, lenient=True)
    assert output == expected_output(row.lenient)


def test_a_refused_close_socket_frame_applies_nothing() -> None:
    """``{"text", "close_socket"}`` without a voice is refused whole: the socket stays usable."""
    row = Row("-", "/ws/tts/stream", '{"text": "Bye.", "close_socket": true} ; '
              '{"voice_id": 1, "text": "Hi.", "flush": true}', "", "no", "-", "")
    output, state = run(row, lenient=False)
    assert [next(iter(f)) for f in output] == ["error", "generation_started"]
    assert output[0]["error_code"] == "MISSING_VOICE_ID"
    assert state is ConnectionState.OPEN


@pytest.mark.parametrize("request_bytes", [
    b"POST /ws/tts/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ws/tts/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    b"GET /ws/tts/stream?api_key=wrong HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
    b"\x00garbage\r\n\r\n",
], ids=["upgrade POST", "plain POST", "playground", "404", "426", "401", "REST", "400"])
def test_every_http_answer_carries_the_request_id(request_bytes: bytes) -> None:
    from kugelwire.server import playground_handler

    options = ServerOptions(engine=ToneEngine())
    conn = ServerConnection(options.new_session, api_key=KEY, now=0.0, request_id=REQUEST_ID,
                            rest_handler=options.rest_handler(), http_handler=playground_handler)
    conn.receive_data(request_bytes, 0.0)
    _, head, _ = split_http(conn.data_to_send())
    assert _headers(head).get(b"x-request-id") == REQUEST_ID.encode(), head


def _get(port: int, target: str, key: str | None = KEY) -> tuple[int, dict[bytes, bytes], Any]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status, head, body = split_http(data)
    return status, _headers(head), json.loads(body) if body else None


@pytest.mark.timeout(20)
@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_rest_routes_on_both_runners(runner: str) -> None:
    from kugelwire.server import run_in_thread, trio_serve
    from kugelwire.synth import TONE_VOICES

    def check(port: int) -> None:
        status, headers, body = _get(port, "/v1/voices?limit=2&offset=1")
        assert status == 200 and headers[b"content-type"] == b"application/json"
        assert [v["id"] for v in body["voices"]] == [v.id for v in TONE_VOICES][1:3]
        assert body["total"] == len(TONE_VOICES)
        assert _get(port, "/v1/voices/tone-high")[2]["id"] == 2
        assert _get(port, "/v1/models")[2]["models"][0]["id"] == "kugel-3"
        assert _get(port, "/v1/models", key=None)[0] == 401
        assert _get(port, "/v1/voices/5")[0] == 404

    if runner == "asyncio":
        with run_in_thread(api_key=KEY) as handle:
            check(handle.port)
        return
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with trio_serve(api_key=KEY) as server:
            await trio.to_thread.run_sync(check, server.port)

    trio.run(main)
