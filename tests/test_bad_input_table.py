"""``docs/bad-input.md`` is executable: every row of its table is replayed against the server.

Each row is fed, as raw bytes, to a fresh byte-level :class:`ServerConnection` routed to the real
server sessions (the same objects the runners use, with the default :class:`ServerLimits` and a
1 MiB message limit), with no engine attached: nothing is ever synthesised, so the response to
the bad input is exact and deterministic. The frames the server sends in answer to the row's
*Frame* (after its *Setup*) must equal the row's *Response*, and the socket must end up as the
row's *Socket* column says. A change in behaviour or in the table fails this test.

Cell syntax (also documented at the top of the page):

* *Setup* / *Frame*: ``;``-separated client frames. A JSON text is sent as a text frame;
  ``N × FRAME`` sends FRAME N times with ``{i}`` replaced by 1..N; ``<N × c>`` inside a frame
  expands to the character ``c`` repeated N times; ``binary: HEX`` is a binary frame,
  ``text-bytes: HEX`` a text frame carrying raw bytes, ``frame: OPCODE FIN MASKED HEX`` a raw
  frame; ``GET /path …`` rows replace the opening handshake itself.
* *Response*: ``;``-separated server output: a JSON object is one text frame (compared as
  JSON), ``close CODE`` a close frame, ``HTTP STATUS [BODY]`` an HTTP response to the upgrade,
  ``nothing`` for no output at all.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kugelwire.protocol._server import (
    MultiServerSession,
    StreamServerSession,
    TTSServerSession,
    _ServerSession,
)
from kugelwire.protocol._ws import ConnectionState, ServerConnection
from kugelwire.synth import TONE_VOICES

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
KEY = "bad-input-test-key"
_SESSIONS: dict[str, type[_ServerSession]] = {
    "/ws/tts": TTSServerSession,
    "/ws/tts/stream": StreamServerSession,
    "/ws/tts/multi": MultiServerSession,
}
_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# -- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    case: str
    endpoint: str
    setup: str
    frame: str
    response: str
    socket: str


def _cell(text: str) -> str:
    text = text.strip()
    if text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    return text.replace("\\|", "|")


def parse_table(markdown: str) -> list[Row]:
    """The rows of the first table whose header starts with ``| Case |``."""
    rows: list[Row] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("| Case |"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if rows:
                break
            continue
        if set(line.replace("|", "").strip()) <= {"-", ":", " "}:
            continue  # the separator row
        cells = [_cell(c) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 6, f"malformed row ({len(cells)} cells): {line}"
        rows.append(Row(*cells))
    return rows


# -- raw WebSocket frames -------------------------------------------------------------------------
def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 2**16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    mask = os.urandom(4)
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _expand(text: str) -> str:
    return re.sub(r"<(\d+) × (.)>", lambda m: m.group(2) * int(m.group(1)), text)


def _split(cell: str) -> list[str]:
    return [] if cell in ("", "-") else [p.strip() for p in cell.split(" ; ")]


def encode_frames(cell: str) -> bytes:
    """Client bytes for a Setup/Frame cell."""
    out = bytearray()
    for part in _split(cell):
        m = re.fullmatch(r"(\d+) × (.*)", part)
        copies = [part] if m is None else [m.group(2).replace("{i}", str(i))
                                           for i in range(1, int(m.group(1)) + 1)]
        for item in copies:
            if item.startswith("binary:"):
                out += ws_frame(0x2, bytes.fromhex(item[7:]))
            elif item.startswith("text-bytes:"):
                out += ws_frame(0x1, bytes.fromhex(item[11:]))
            elif item.startswith("frame:"):
                opcode, fin, masked, *hexdata = item[6:].split()
                out += ws_frame(int(opcode, 0), bytes.fromhex("".join(hexdata)),
                                fin=fin == "fin", masked=masked == "masked")
            else:
                out += ws_frame(0x1, _expand(item).encode("utf-8"))
    return bytes(out)


def upgrade_request(target: str, extra: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_WS_KEY}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode("latin-1")


def handshake_request(method: str, target: str, extras: list[str]) -> bytes:
    """The upgrade of a ``GET target + ...`` row: each extra ``Name: value`` replaces the
    default header of that name (or is added); ``http/1.0`` sets the version."""
    version = "1.1"
    headers = {
        "host": "Host: localhost",
        "upgrade": "Upgrade: websocket",
        "connection": "Connection: Upgrade",
        "sec-websocket-key": f"Sec-WebSocket-Key: {_WS_KEY}",
        "sec-websocket-version": "Sec-WebSocket-Version: 13",
    }
    added: list[str] = []
    for extra in extras:
        if extra == "http/1.0":
            version = "1.0"
            continue
        name = extra.partition(":")[0].strip().lower()
        if name in headers and name != "sec-websocket-version":
            headers[name] = extra
        else:
            added.append(extra)
    lines = [f"{method} {target} HTTP/{version}", *headers.values(), *added]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- reading what the server sent ---------------------------------------------------------------
def parse_server_bytes(data: bytes) -> list[Any]:
    """Server frames as JSON objects (text), ``("close", code)``, ``("binary", b)``..."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        payload, pos = data[pos : pos + n], pos + n
        opcode = b0 & 0x0F
        if opcode == 0x1:
            out.append(json.loads(payload))
        elif opcode == 0x8:
            out.append(("close", struct.unpack("!H", payload[:2])[0] if payload else None))
        else:
            out.append(("opcode", opcode, payload))
    return out


def split_http(data: bytes) -> tuple[int, bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, rest


def expected_output(cell: str) -> list[Any]:
    out: list[Any] = []
    for part in _split(cell):
        if part == "nothing":
            continue
        if m := re.fullmatch(r"close (\d+)", part):
            out.append(("close", int(m.group(1))))
        elif m := re.fullmatch(r"HTTP (\d+)(?: (.*))?", part):
            out.append(("http", int(m.group(1)), json.loads(m.group(2)) if m.group(2) else None))
        else:
            out.append(json.loads(part))
    return out


# -- running a row ------------------------------------------------------------------------------
@dataclass
class Outcome:
    output: list[Any]
    state: ConnectionState
    sent: bytes  # every byte the server wrote (to check that no secret leaks)


REQUEST_ID = "req_bad_input"


def run_row(row: Row, *, lenient: bool = False) -> Outcome:
    """Replay ``row`` against the sessions a tone-engine server routes to (its catalogue)."""
    now = 1000.0
    conn = ServerConnection(
        lambda path: (
            cls(catalogue=TONE_VOICES, lenient=lenient)
            if (cls := _SESSIONS.get(path)) is not None
            else None
        ),
        api_key=KEY, now=now, max_message_size=2**20, request_id=REQUEST_ID,
    )
    sent = bytearray()
    if row.frame.startswith(("GET ", "POST ")):
        head, *extras = row.frame.replace("KEY", KEY).split(" + ")
        method, target = head.split(" ", 1)
        if extras == ["no-upgrade"]:
            request = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        else:
            request = handshake_request(method, target, [_expand(e) for e in extras])
        conn.receive_data(request, now)
        data = conn.data_to_send()
        status, _, body = split_http(data)
        return Outcome([("http", status, json.loads(body) if body else None)], conn.state, data)
    conn.receive_data(upgrade_request(f"{row.endpoint}?api_key={KEY}"), now)
    data = conn.data_to_send()
    sent += data
    status, _, rest = split_http(data)
    assert status == 101, data
    assert rest == b""
    if setup := encode_frames(row.setup):
        conn.receive_data(setup, now)
    sent += conn.data_to_send()
    conn.receive_data(encode_frames(row.frame), now)
    data = conn.data_to_send()
    sent += data
    return Outcome(parse_server_bytes(data), conn.state, bytes(sent))


ROWS = parse_table(DOC.read_text(encoding="utf-8"))


def test_the_table_is_substantial() -> None:
    assert len(ROWS) >= 30
    assert len({r.case for r in ROWS}) == len(ROWS), "case names must be unique"


def without_request_ids(output: list[Any]) -> list[Any]:
    """``output`` with the ``request_id`` of every error frame removed, after checking that
    each error frame carries the connection's id."""
    out: list[Any] = []
    for item in output:
        if isinstance(item, dict) and "error" in item:
            assert item.get("request_id") == REQUEST_ID, item
            item = {k: v for k, v in item.items() if k != "request_id"}
        out.append(item)
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.case for r in ROWS])
def test_row(row: Row) -> None:
    outcome = run_row(row)
    assert without_request_ids(outcome.output) == expected_output(row.response)
    if row.socket == "open":
        assert outcome.state is ConnectionState.OPEN
    elif row.socket == "closing":
        assert outcome.state is ConnectionState.CLOSING
    else:
        assert row.socket == "closed", row.socket
        assert outcome.state is ConnectionState.CLOSED
    assert KEY.encode() not in outcome.sent, "the API key must never be echoed"
