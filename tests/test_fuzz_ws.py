"""The byte-level fuzz harnesses (fuzz/*.py) run under hypothesis in CI (< 20 s in total).

atheris runs the same ``one_input`` functions coverage-guided (see fuzz/README.md); here
hypothesis feeds them ``st.binary()`` plus mutations of each harness's seeds.
"""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_FUZZ = pathlib.Path(__file__).resolve().parents[1] / "fuzz"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, _FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ws_server = _load("fuzz_ws_server")
ws_client = _load("fuzz_ws_client")
messages = _load("fuzz_messages")

_settings = settings(
    max_examples=500, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few bytes overwritten, inserted or deleted, or arbitrary bytes."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 4))):
            pos = draw(st.integers(0, len(data)))
            op = draw(st.integers(0, 2))
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
            elif op == 1:
                data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
            else:
                del data[pos : pos + draw(st.integers(1, 8))]
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=300))


@_settings
@given(_mutated(ws_server.SEEDS))
def test_server_connection_bytes(data: bytes) -> None:
    ws_server.one_input(data)


@_settings
@given(_mutated(ws_client.SEEDS))
def test_client_connection_bytes(data: bytes) -> None:
    ws_client.one_input(data)


@settings(_settings, max_examples=2000)
@given(_mutated(messages.SEEDS))
def test_message_parsers(data: bytes) -> None:
    messages.one_input(data)


def test_seeds_pass() -> None:
    for module in (ws_server, ws_client, messages):
        for seed in module.SEEDS:
            module.one_input(seed)


# -- crashes the atheris runs found (fixed; kept as regression inputs) -------------------------

def test_non_ascii_connection_header_is_a_400_not_a_crash() -> None:
    """atheris, fuzz_ws_server: a Connection header with non-ASCII bytes made wsproto raise
    UnicodeDecodeError out of ServerConnection.receive_data."""
    from kugelwire.protocol import ConnectionClosed, Rejected, ServerConnection, StreamServerSession

    request = ws_server.UPGRADE.replace(b"Connection: Upgrade", b"Connection: \xff\xfe\x10")
    conn = ServerConnection(lambda path: StreamServerSession(), now=0.0)
    conn.receive_data(request, 0.0)
    assert conn.data_to_send().startswith(b"HTTP/1.1 400")
    events = list(conn.events())
    assert isinstance(events[0], Rejected) and events[0].status_code == 400
    assert isinstance(events[-1], ConnectionClosed)
    ws_server.one_input(b"\x00" + request)


def test_audio_frame_without_samples_never_negative() -> None:
    """atheris, fuzz_messages: {"audio": "="} (no samples) parsed to samples=-1, a negative
    duration, and a frame whose own JSON no longer parsed."""
    from kugelwire.protocol import AudioFrame, RemoteProtocolError, parse_server_message

    # "=" is not base64: refused when parsed (the payload is decoded strictly)
    with pytest.raises(RemoteProtocolError):
        parse_server_message('{"audio": "=", "sr": 2}')
    frame = parse_server_message('{"audio": "", "sr": 2}')
    assert isinstance(frame, AudioFrame)
    assert frame.samples == 0 and frame.duration_s == 0.0
    assert parse_server_message(frame.to_json()) == frame
    messages.one_input(b'{"audio":"=", "sr":2.0}')


def test_split_invariance_of_the_client_fast_path() -> None:
    """Messages split at every byte arrive exactly as in one read (fuzz_ws_client property)."""
    ws_client.one_input(ws_client.SEEDS[0])
    ws_client.one_input(b"\x00" + ws_client._frame(b'{"final": true}' * 20))
