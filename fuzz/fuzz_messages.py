"""Fuzzing of the JSON message parsers ``parse_client_message`` / ``parse_server_message``.

    python fuzz/fuzz_messages.py -max_total_time=120 -rss_limit_mb=2048 -timeout=10

Properties: the only exception either parser raises is
:class:`~kugelwire.protocol.RemoteProtocolError` (with a 4xx ``code`` and an ``error_code``);
a parsed server frame survives a round trip (``to_json`` then ``parse_server_message`` keeps
its type and, once normalised, is a fixed point); work is bounded per input.
``tests/test_fuzz_ws.py`` runs :func:`one_input` under hypothesis in CI.
"""

from __future__ import annotations

import time

from kugelwire.protocol import (
    RemoteProtocolError,
    UnknownFrame,
    parse_client_message,
    parse_server_message,
)

SEEDS = [
    b'{"text": "Hello there. ", "flush": true, "voice_id": 1, "sample_rate": 24000}',
    b'{"text": " ", "context_id": "a", "voice_settings": {"voice_id": 1, "cfg_scale": 2}}',
    b'{"cancel": true, "context_id": "a"}',
    b'{"close_context": true, "context_id": "a", "immediate": true}',
    b'{"update_settings": {"speed": 1.2, "temperature": 0.5}}',
    b'{"audio": "AAAA", "enc": "pcm_s16le", "idx": 0, "sr": 24000, "samples": 2, "chunk_id": 0}',
    b'{"final": true, "total_audio_seconds": 0.1, "usage": {"audio_seconds": 0.1}}',
    b'{"word_timestamps": [{"word": "Hi", "start_ms": 0, "end_ms": 10}], "chunk_id": 0}',
    b'{"error": "x", "error_code": "RATE_LIMITED", "code": 429, "retry_after": 3}',
    b'[1, 2, {"a": 1e999}]',
    b'{"text": "\\ud800"}',
]


def _text(data: bytes) -> str:
    # WebSocket text is valid UTF-8, but a session may be fed any str: lone surrogates too.
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def one_input(data: bytes) -> None:
    t0 = time.perf_counter()
    text = _text(data) if not data.startswith(b"\xff") else data[1:].decode("latin-1")
    try:
        parse_client_message(text)
    except RemoteProtocolError as exc:
        assert 400 <= exc.code < 500 and exc.error_code, exc
    try:
        frame = parse_server_message(text)
    except RemoteProtocolError as exc:
        assert 400 <= exc.code < 500 and exc.error_code, exc
    else:
        if not isinstance(frame, UnknownFrame):
            # Serialising normalises (e.g. usage gains cost_unavailable / currency), so the
            # round trip is checked once normalised: it must then be a fixed point.
            once = parse_server_message(frame.to_json())
            twice = parse_server_message(once.to_json())
            assert type(once) is type(frame)
            assert twice == once, (frame, once, twice)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0 + 20e-6 * len(data), elapsed


def main() -> None:
    from _harness import run  # fuzz/ is on sys.path when this file runs as a script

    run("messages", SEEDS, one_input)


if __name__ == "__main__":
    main()
