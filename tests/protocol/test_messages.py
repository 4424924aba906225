"""The wire schema: every server frame of REFERENCE §3 and every SDK client frame of §2.3-§2.4."""

from __future__ import annotations

import base64
import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kugelwire.protocol._config import SETTINGS_KEYS, Config, SettingsUpdate, VoiceSettings
from kugelwire.protocol._errors import LocalProtocolError, RemoteProtocolError
from kugelwire.protocol._messages import (
    AudioFrame,
    ChunkCompleteFrame,
    ClientMessage,
    ContextClosedFrame,
    ContextCreatedFrame,
    ContextTimeoutFrame,
    ErrorFrame,
    FinalFrame,
    GenerationStartedFrame,
    InterruptedFrame,
    IsFinalFrame,
    SessionClosedFrame,
    SessionStartedFrame,
    SettingsUpdatedFrame,
    UnknownFrame,
    Usage,
    WarningFrame,
    WordTimestamp,
    WordTimestampsFrame,
    parse_client_message,
    parse_server_message,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE = int("1" + "0" * 400)  # a JSON integer far beyond float range


def srv(obj: dict[str, Any] | str) -> Any:
    return parse_server_message(obj if isinstance(obj, str) else json.dumps(obj))


def cli(obj: dict[str, Any] | str) -> ClientMessage:
    return parse_client_message(obj if isinstance(obj, str) else json.dumps(obj))


USAGE = {
    "audio_seconds": 1.2,
    "characters": 25,
    "cost_cents": 0.11,
    "currency": "eur",
    "model_id": "kugel-3",
}


# =============================================================================================
# Server frames (REFERENCE §3)


class TestServerFrames:
    def test_audio_frame(self) -> None:
        pcm = b"\x01\x00\x02\x00"
        b64 = base64.b64encode(pcm).decode()
        msg = srv(
            {"audio": b64, "enc": "pcm_s16le", "idx": 3, "sr": 24000, "samples": 2, "chunk_id": 1}
        )
        assert msg == AudioFrame(b64, "pcm_s16le", 3, 24000, 2, 1, None)
        assert msg.data == pcm
        assert msg.duration_s == pytest.approx(2 / 24000)

    def test_audio_multi_has_context_id(self) -> None:
        msg = srv({"audio": "AAA=", "context_id": "narrator", "idx": 0, "sr": 24000, "samples": 1})
        assert isinstance(msg, AudioFrame)
        assert msg.context_id == "narrator"

    def test_audio_defaults_when_fields_missing(self) -> None:
        # SDK parsing defaults: enc -> pcm_s16le, sr -> 24000, idx -> 0 (REFERENCE §3.1).
        msg = srv({"audio": base64.b64encode(b"\x00" * 8).decode()})
        assert (msg.enc, msg.sr, msg.idx, msg.chunk_id) == ("pcm_s16le", 24000, 0, None)
        assert msg.samples == 4  # derived from the payload without decoding

    def test_audio_g711_samples_derived(self) -> None:
        msg = srv({"audio": base64.b64encode(b"\xff" * 9).decode(), "enc": "mulaw", "sr": 8000})
        assert msg.samples == 9

    def test_audio_integral_float_accepted(self) -> None:
        audio = base64.b64encode(b"\0" * 9600).decode()
        msg = srv({"audio": audio, "sr": 24000.0, "idx": 2.0, "samples": 4800.0})
        assert (msg.sr, msg.idx, msg.samples) == (24000, 2, 4800)

    def test_audio_lazy_decode_and_cache(self) -> None:
        msg = srv({"audio": base64.b64encode(b"abcd").decode(), "samples": 2})
        assert msg._data == []  # nothing decoded at parse time
        first = msg.data
        assert first == b"abcd"
        assert msg._data == [b"abcd"]
        assert msg.data is first  # cached: same object

    @pytest.mark.parametrize(
        "audio", ["!!!not base64!!!", "AAA", "=", "A===", "AA=A", "AAAA====", "AAÿA", "AA AA==="]
    )
    @pytest.mark.parametrize("fast", [True, False], ids=["all-fields", "defaults"])
    def test_audio_bad_base64_is_refused_when_parsed(self, audio: str, fast: bool) -> None:
        # not delivered as a frame that fails later in .data: the parse itself refuses it
        obj: dict[str, Any] = {"audio": audio}
        if fast:
            obj.update(enc="pcm_s16le", idx=0, sr=24000, samples=len(audio) * 3 // 8, chunk_id=0)
        with pytest.raises(RemoteProtocolError) as exc_info:
            srv(obj)
        assert exc_info.value.field == "audio"
        assert "base64" in exc_info.value.message

    @pytest.mark.parametrize(
        ("enc", "payload", "samples"),
        [("pcm_s16le", b"\0" * 8, 5), ("pcm_s16le", b"\0" * 8, 3), ("pcm_s16le", b"\0" * 8, 10**15),
         ("mulaw", b"\0" * 9, 8), ("alaw", b"\0" * 9, 18), ("pcm_s16le", b"", 1)],
    )
    def test_audio_samples_must_match_the_payload(
        self, enc: str, payload: bytes, samples: int
    ) -> None:
        audio = base64.b64encode(payload).decode()
        with pytest.raises(RemoteProtocolError) as exc_info:
            srv({"audio": audio, "enc": enc, "idx": 0, "sr": 8000, "samples": samples})
        assert exc_info.value.field == "samples"

    def test_audio_odd_pcm16_payload_is_refused(self) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            srv({"audio": base64.b64encode(b"\0" * 3).decode()})
        assert exc_info.value.field == "audio"

    @given(st.binary(max_size=300), st.sampled_from(["pcm_s16le", "mulaw", "alaw"]))
    def test_audio_is_checked_and_decoded_once_when_parsed(self, payload: bytes, enc: str) -> None:
        width = 2 if enc == "pcm_s16le" else 1
        payload = payload[: len(payload) // width * width]
        audio = base64.b64encode(payload).decode()
        samples = len(payload) // width
        msg = srv({"audio": audio, "enc": enc, "idx": 0, "sr": 8000, "samples": samples})
        assert isinstance(msg, AudioFrame)
        assert msg._data == [payload]  # checked by decoding it, once
        assert msg.data is msg._data[0]

    def test_audio_from_bytes_caches(self) -> None:
        frame = AudioFrame.from_bytes(b"\x00\x01" * 10, idx=0, sr=16000, chunk_id=0)
        assert frame.samples == 10
        assert frame._data == [b"\x00\x01" * 10]
        parsed = srv(frame.to_json())
        assert parsed == frame
        assert parsed.data == frame.data

    @pytest.mark.parametrize(("enc", "samples"), [("pcm_s16le", 5), ("mulaw", 10), ("alaw", 10)])
    def test_audio_from_bytes_counts_samples_by_encoding(self, enc: str, samples: int) -> None:
        frame = AudioFrame.from_bytes(bytes(10), enc=enc, idx=0, sr=8000)
        assert frame.samples == samples
        assert srv(frame.to_json()) == frame  # the parser's rule is the same one

    def test_pcm16_passthrough(self) -> None:
        frame = AudioFrame.from_bytes(b"\x10\x00\x20\x00", idx=0, sr=24000)
        assert frame.pcm16() == b"\x10\x00\x20\x00"

    @pytest.mark.parametrize("enc", ["mulaw", "alaw"])
    def test_pcm16_g711(self, enc: str) -> None:
        g711 = pytest.importorskip("kugelwire.protocol._g711")
        raw = bytes(range(0, 256, 7))
        msg = srv({"audio": base64.b64encode(raw).decode(), "enc": enc, "sr": 8000})
        decode = g711.ulaw_decode if enc == "mulaw" else g711.alaw_decode
        pcm = msg.pcm16()
        assert pcm == decode(raw)
        assert len(pcm) == 2 * len(raw)

    def test_word_timestamps(self) -> None:
        msg = srv(
            {
                "word_timestamps": [
                    {
                        "word": "Hello",
                        "start_ms": 0,
                        "end_ms": 320,
                        "char_start": 0,
                        "char_end": 5,
                        "score": 1.0,
                    },
                    {
                        "word": "world",
                        "start_ms": 350,
                        "end_ms": 680,
                        "char_start": 7,
                        "char_end": 12,
                    },
                ],
                "chunk_id": 0,
            }
        )
        assert msg == WordTimestampsFrame(
            (
                WordTimestamp("Hello", 0, 320, 0, 5, 1.0),
                WordTimestamp("world", 350, 680, 7, 12, 1.0),  # score defaults to 1.0
            ),
            0,
            None,
        )

    def test_word_timestamps_multi_and_empty(self) -> None:
        msg = srv({"word_timestamps": [], "chunk_id": 2, "context_id": "c"})
        assert msg == WordTimestampsFrame((), 2, "c")

    @pytest.mark.parametrize(
        ("words", "field"),
        [
            ("x", "word_timestamps"),
            ([1], "word_timestamps[0]"),
            ([{"word": 5}], "word_timestamps[0].word"),
            ([{"word": "a", "start_ms": -1}], "word_timestamps[0].start_ms"),
            ([{"word": "a", "start_ms": 10, "end_ms": 5}], "word_timestamps[0].end_ms"),
            ([{"word": "a", "char_start": "0"}], "word_timestamps[0].char_start"),
        ],
    )
    def test_word_timestamps_errors(self, words: Any, field: str) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            srv({"word_timestamps": words, "chunk_id": 0})
        assert exc_info.value.field == field

    def test_generation_started(self) -> None:
        msg = srv({"generation_started": True, "chunk_id": 0, "text": "Hello, this is streaming."})
        assert msg == GenerationStartedFrame(0, "Hello, this is streaming.", None)
        msg = srv({"generation_started": True, "context_id": "ctx1", "chunk_id": 1, "text": "x"})
        assert msg == GenerationStartedFrame(1, "x", "ctx1")

    def test_chunk_complete(self) -> None:
        msg = srv({"chunk_complete": True, "chunk_id": 0, "audio_seconds": 1.2, "gen_ms": 150})
        assert msg == ChunkCompleteFrame(0, 1.2, 150.0, None)
        msg = srv({"chunk_complete": True, "context_id": "c", "chunk_id": 3})
        assert msg == ChunkCompleteFrame(3, 0.0, 0.0, "c")

    def test_final_stream(self) -> None:
        msg = srv(
            {
                "final": True,
                "total_audio_seconds": 5.4,
                "total_text_chunks": 3,
                "total_audio_chunks": 15,
            }
        )
        assert msg == FinalFrame(
            total_audio_seconds=5.4, total_text_chunks=3, total_audio_chunks=15
        )

    def test_final_tts_with_stats_and_usage(self) -> None:
        msg = srv(
            {
                "final": True,
                "chunks": 10,
                "total_samples": 48000,
                "dur_ms": 2000,
                "gen_ms": 150,
                "rtf": 0.075,
                "debug": {"original_text": "Hello", "ttfa_ms": None, "speed": 1.0},
                "usage": {**USAGE, "audio_seconds": 2.0, "characters": 31, "cost_cents": 0.18},
            }
        )
        assert isinstance(msg, FinalFrame)
        assert (msg.chunks, msg.total_samples, msg.dur_ms, msg.gen_ms, msg.rtf) == (
            10,
            48000,
            2000.0,
            150.0,
            0.075,
        )
        assert msg.debug == {"original_text": "Hello", "ttfa_ms": None, "speed": 1.0}
        assert msg.usage == Usage(2.0, 31, 0.18, "eur", False, "kugel-3")

    def test_final_multi(self) -> None:
        assert srv({"final": True, "context_id": "narrator"}) == FinalFrame(context_id="narrator")

    def test_session_closed_with_usage(self) -> None:
        msg = srv(
            {
                "session_closed": True,
                "total_audio_seconds": 1.2,
                "total_text_chunks": 1,
                "total_audio_chunks": 2,
                "usage": USAGE,
            }
        )
        assert msg == SessionClosedFrame(1.2, 1, 2, Usage(1.2, 25, 0.11, "eur", False, "kugel-3"))

    def test_session_closed_legacy_without_usage(self) -> None:
        msg = srv({"session_closed": True, "total_audio_seconds": 6.1})
        assert msg == SessionClosedFrame(6.1, None, None, None)

    def test_usage_cost_unavailable(self) -> None:
        msg = srv(
            {
                "context_closed": True,
                "context_id": "c",
                "usage": {"audio_seconds": 1.0, "cost_cents": None, "cost_unavailable": True},
            }
        )
        assert msg == ContextClosedFrame("c", Usage(1.0, None, None, None, True, None))

    def test_interrupted(self) -> None:
        assert srv({"interrupted": True}) == InterruptedFrame(None)
        assert srv({"interrupted": True, "context_id": "c"}) == InterruptedFrame("c")

    def test_settings_updated(self) -> None:
        settings_ = {
            "cfg_scale": 1.5,
            "temperature": None,
            "max_new_tokens": 2048,
            "language": None,
            "normalize": True,
            "speed": 1.1,
        }
        msg = srv({"settings_updated": True, "settings": settings_})
        assert msg == SettingsUpdatedFrame(settings_)
        assert json.loads(msg.to_json()) == {"settings_updated": True, "settings": settings_}

    def test_error_basic(self) -> None:
        msg = srv({"error": "Rate limit exceeded", "error_code": "RATE_LIMITED", "code": 429})
        assert msg == ErrorFrame("Rate limit exceeded", "RATE_LIMITED", 429, None, None, None)

    def test_error_with_retry_after_request_id_context(self) -> None:
        msg = srv(
            {
                "error": "Too many concurrent contexts",
                "error_code": "TOO_MANY_CONTEXTS",
                "code": 429,
                "context_id": "ctx1",
                "request_id": "req-42",
                "retry_after": 3,
            }
        )
        assert msg == ErrorFrame(
            "Too many concurrent contexts", "TOO_MANY_CONTEXTS", 429, "ctx1", "req-42", 3.0
        )

    def test_error_legacy_nested_envelope(self) -> None:
        msg = srv({"error": {"code": "NOT_FOUND", "message": "Voice not found"}})
        assert msg == ErrorFrame("Voice not found", "NOT_FOUND", None, None)

    def test_error_wins_over_audio(self) -> None:
        msg = srv({"error": "boom", "audio": "AAAA"})
        assert isinstance(msg, ErrorFrame)

    def test_warning(self) -> None:
        text = (
            'Turn ended after 5s of inactivity. Send {"flush": true} to end a turn explicitly '
            "— it lowers latency and avoids this auto-flush."
        )
        assert srv({"warning": text}) == WarningFrame(text, None)

    def test_context_frames(self) -> None:
        assert srv({"context_created": True, "context_id": "n"}) == ContextCreatedFrame("n")
        assert srv({"context_closed": True, "context_id": "n"}) == ContextClosedFrame("n", None)
        assert srv({"context_timeout": True, "context_id": "n"}) == ContextTimeoutFrame("n")

    @pytest.mark.parametrize("key", ["context_created", "context_closed", "context_timeout"])
    def test_context_frames_require_context_id(self, key: str) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            srv({key: True})
        assert exc_info.value.field == "context_id"

    def test_legacy_session_started(self) -> None:
        assert srv({"session_started": True, "session_id": "abc"}) == SessionStartedFrame("abc")
        assert srv({"session_started": True, "session_id": 7}) == SessionStartedFrame("7")
        assert srv({"session_started": True}) == SessionStartedFrame(None)

    def test_legacy_is_final(self) -> None:
        assert srv({"is_final": True, "context_id": "c"}) == IsFinalFrame("c")

    @pytest.mark.parametrize(
        "obj",
        [
            {},
            {"something_new": True, "x": 1},
            {"final": False},
            {"interrupted": 0},
            {"session_closed": None},
        ],
    )
    def test_unknown_frames(self, obj: dict[str, Any]) -> None:
        msg = srv(obj)
        assert msg == UnknownFrame(tuple(obj))
        assert msg.to_json() == "{}"

    def test_unknown_fields_tolerated(self) -> None:
        msg = srv({"interrupted": True, "future_field": [1, 2, 3]})
        assert msg == InterruptedFrame(None)

    def test_bytes_input_accepted(self) -> None:
        assert srv(b'{"interrupted": true}'.decode()) == InterruptedFrame(None)
        assert parse_server_message(b'{"interrupted": true}') == InterruptedFrame(None)


# ---------------------------------------------------------------------------------------------
# strict type/range errors name the field


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"audio": "AAAA", "idx": -1}, "idx"),
        ({"audio": "AAAA", "idx": 1.5}, "idx"),
        ({"audio": "AAAA", "sr": "x"}, "sr"),
        ({"audio": "AAAA", "sr": 0}, "sr"),
        ({"audio": "AAAA", "samples": True}, "samples"),
        ({"audio": "AAAA", "samples": -4}, "samples"),
        ({"audio": "AAAA", "enc": "mp3"}, "enc"),
        ({"audio": "AAAA", "enc": 5}, "enc"),
        ({"audio": 123}, "audio"),
        ({"audio": "AAAA", "chunk_id": "0"}, "chunk_id"),
        ({"audio": "AAAA", "context_id": 5}, "context_id"),
        ({"audio": "AAAA", "context_id": ""}, "context_id"),
        ({"audio": "AAAA", "context_id": "x" * 257}, "context_id"),
        ({"generation_started": True, "chunk_id": -1}, "chunk_id"),
        ({"generation_started": True, "text": 5}, "text"),
        ({"chunk_complete": True, "audio_seconds": "1"}, "audio_seconds"),
        ({"chunk_complete": True, "gen_ms": -1}, "gen_ms"),
        ({"final": True, "total_audio_seconds": -0.5}, "total_audio_seconds"),
        ({"final": True, "debug": []}, "debug"),
        ({"final": True, "usage": "x"}, "usage"),
        ({"session_closed": True, "usage": {"audio_seconds": -1}}, "usage.audio_seconds"),
        ({"session_closed": True, "usage": {"characters": 1.5}}, "usage.characters"),
        ({"session_closed": True, "usage": {"currency": 1}}, "usage.currency"),
        ({"session_closed": True, "total_text_chunks": True}, "total_text_chunks"),
        ({"error": "x", "code": "429"}, "code"),
        ({"error": "x", "error_code": 5}, "error_code"),
        ({"error": "x", "retry_after": -1}, "retry_after"),
        ({"settings_updated": True, "settings": []}, "settings"),
        ({"final": True, "total_audio_seconds": math.inf}, "total_audio_seconds"),
    ],
)
def test_server_field_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        srv(obj)
    assert exc_info.value.field == field
    assert field.split(".")[-1].split("[")[0] in exc_info.value.message


def test_nan_rejected_where_a_number_is_expected() -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        srv('{"chunk_complete": true, "audio_seconds": NaN}')
    assert exc_info.value.field == "audio_seconds"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        '{"a": 1',
        "[]",
        "[1, 2]",
        "42",
        '"string"',
        "null",
        "true",
        "NaN",
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        b"\xff\xfe\x00garbage",
        '{"audio": "AAAA"} trailing',
    ],
)
def test_garbage_raises_remote_protocol_error(text: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_server_message(text)
    with pytest.raises(RemoteProtocolError):
        parse_client_message(text)


@pytest.mark.parametrize("enc", [[], {}, ["pcm_s16le"]])
def test_unhashable_enc_is_a_remote_protocol_error(enc: Any) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        srv({"audio": "AAAA", "enc": enc})
    assert exc_info.value.field == "enc"


@pytest.mark.parametrize(
    ("parse", "obj", "field"),
    [
        (srv, {"audio": "AAAA", "idx": HUGE}, "idx"),
        (srv, {"audio": "AAAA", "sr": -HUGE}, "sr"),
        (srv, {"error": "x", "retry_after": HUGE}, "retry_after"),
        (srv, {"chunk_complete": True, "audio_seconds": HUGE}, "audio_seconds"),
        (cli, {"temperature": HUGE}, "temperature"),
        (cli, {"max_new_tokens": HUGE}, "max_new_tokens"),
        (cli, {"dictionary_ids": [-HUGE]}, "dictionary_ids[0]"),
        (cli, {"update_settings": {"speed": HUGE}}, "update_settings.speed"),
        (cli, {"voice_settings": {"cfg_scale": HUGE}}, "voice_settings.cfg_scale"),
    ],
)
def test_huge_integers_are_remote_protocol_errors(parse: Any, obj: Any, field: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        parse(obj)
    assert exc_info.value.field == field


# ---------------------------------------------------------------------------------------------
# garbage fuzzing: only RemoteProtocolError may escape

# JSON scalars that stay in float range (huge integers are covered by the xfail test above).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
KEYS = [
    "audio", "enc", "idx", "sr", "samples", "chunk_id", "context_id", "error", "error_code",
    "code", "retry_after", "request_id", "generation_started", "text", "word_timestamps",
    "final", "session_closed", "chunk_complete", "interrupted", "settings_updated", "settings",
    "context_created", "context_closed", "context_timeout", "warning", "session_started",
    "session_id", "is_final", "usage", "debug", "total_audio_seconds", "audio_seconds",
    "flush", "cancel", "close", "end_session", "close_socket", "close_context", "immediate",
    "keep_alive", "voice_settings", "update_settings", "voice_id", "model_id", "cfg_scale",
    "temperature", "max_new_tokens", "sample_rate", "output_format", "normalize", "language",
    "speed", "word_timestamps", "dictionary_ids", "chunk_length_schedule", "inactivity_timeout",
    "start_ms", "end_ms", "word", "char_start", "char_end", "score",
]  # fmt: skip
json_keys = st.sampled_from(KEYS) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=8)


def _only_remote_errors(text: str | bytes) -> None:
    for parse in (parse_server_message, parse_client_message):
        try:
            msg = parse(text)
        except RemoteProtocolError:
            continue
        if isinstance(msg, AudioFrame):
            with contextlib.suppress(RemoteProtocolError):
                msg.data  # noqa: B018


@FAST
@given(st.text())
def test_fuzz_text(text: str) -> None:
    _only_remote_errors(text)


@FAST
@given(st.binary())
def test_fuzz_binary(data: bytes) -> None:
    _only_remote_errors(data)


@FAST
@given(json_values)
def test_fuzz_json_values(value: Any) -> None:
    _only_remote_errors(json.dumps(value))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_objects)
def test_fuzz_json_objects(obj: dict[str, Any]) -> None:
    _only_remote_errors(json.dumps(obj))


# =============================================================================================
# Client frames (REFERENCE §2.3-§2.5)

PY_SDK_FIRST_FRAME = {
    "text": "Hello",
    "flush": False,
    "cfg_scale": 2.0,
    "max_new_tokens": 2048,
    "sample_rate": 24000,
    "flush_timeout_ms": 500,
    "max_buffer_length": 1000,
    "normalize": True,
    "word_timestamps": False,
    "speed": 1.0,
    "voice_id": 1071,
    "model_id": "kugel-3",
    "output_format": "pcm_24000",
    "language": "en",
    "chunk_length_schedule": [5, 80, 150, 250],
    "auto_mode": False,
    "temperature": 0.4,
    "project_id": 7,
    "dictionary_ids": [],
}


class TestClientFrames:
    def test_python_sdk_first_frame_full_config(self) -> None:
        msg = cli(PY_SDK_FIRST_FRAME)
        assert msg.text == "Hello"
        assert msg.flush is False
        assert msg.config == Config(
            voice_id=1071,
            model_id="kugel-3",
            cfg_scale=2.0,
            temperature=0.4,
            max_new_tokens=2048,
            sample_rate=24000,
            output_format="pcm_24000",
            normalize=True,
            language="en",
            speed=1.0,
            word_timestamps=False,
            project_id=7,
            dictionary_ids=(),
            flush_timeout_ms=500,
            max_buffer_length=1000,
            chunk_length_schedule=(5, 80, 150, 250),
            auto_mode=False,
        )
        # dictionary_ids [] and absent mean different things: [] survives.
        assert msg.config.to_dict()["dictionary_ids"] == []
        assert "dictionary_ids" not in cli({"text": "x"}).config.to_dict()

    def test_docs_config_frame_without_text(self) -> None:
        msg = cli(
            {
                "voice_id": 1071,
                "model_id": "kugel-3",
                "cfg_scale": 2.0,
                "temperature": 0.4,
                "sample_rate": 24000,
                "normalize": True,
                "language": "en",
                "word_timestamps": False,
                "flush_timeout_ms": 500,
                "max_buffer_length": 1000,
                "speed": 1.0,
            }
        )
        assert msg.text is None
        assert msg.config.voice_id == 1071

    @pytest.mark.parametrize(
        ("obj", "attrs"),
        [
            ({"text": "tok", "flush": True}, {"text": "tok", "flush": True}),
            ({"flush": True}, {"flush": True, "text": None}),
            ({"close": True}, {"close": True}),
            ({"end_session": True}, {"close": True}),
            ({"close_socket": True}, {"close_socket": True}),
            ({"cancel": True}, {"cancel": True}),
            ({"cancel": True, "context_id": "c"}, {"cancel": True, "context_id": "c"}),
            (
                {"close_context": True, "context_id": "c", "immediate": True},
                {"close_context": True, "immediate": True, "context_id": "c"},
            ),
            ({"keep_alive": True, "context_id": "c"}, {"keep_alive": True, "context_id": "c"}),
            ({"text": "", "context_id": "c"}, {"text": "", "context_id": "c"}),
            ({"flush": False, "cancel": None}, {"flush": False, "cancel": False}),
        ],
    )
    def test_command_frames(self, obj: dict[str, Any], attrs: dict[str, Any]) -> None:
        msg = cli(obj)
        for key, value in attrs.items():
            assert getattr(msg, key) == value, key

    def test_livekit_config_only_frame(self) -> None:
        msg = cli({"text": "", "voice_id": 1, "model_id": "kugel-3"})
        assert msg.text == ""
        assert msg.context_id is None
        assert (msg.config.voice_id, msg.config.model_id) == (1, "kugel-3")

    def test_string_voice_handle(self) -> None:
        assert cli({"voice_id": "my-voice"}).config.voice_id == "my-voice"

    def test_multi_init_frames(self) -> None:
        docs = cli(
            {
                "text": " ",
                "context_id": "narrator",
                "voice_settings": {"voice_id": 1071},
                "model_id": "kugel-3",
                "sample_rate": 24000,
                "language": "en",
            }
        )
        assert docs.voice_settings == VoiceSettings(1071)
        assert docs.config.sample_rate == 24000
        py = cli(
            {
                "text": " ",
                "context_id": "ctx",
                "sample_rate": 24000,
                "normalize": True,
                "word_timestamps": True,
                "inactivity_timeout": 20.0,
                "voice_settings": {"voice_id": 5, "cfg_scale": 2.0, "max_new_tokens": 1024},
            }
        )
        assert py.voice_settings == VoiceSettings(5, 2.0, 1024)
        assert py.config.inactivity_timeout == 20.0

    def test_multi_init_elevenlabs_keys_ignored(self) -> None:
        msg = cli(
            {
                "text": "",
                "context_id": "ctx",
                "voice_settings": {
                    "voice_id": 1071,
                    "stability": 0.5,
                    "similarity_boost": 0.75,
                    "style": 0,
                    "use_speaker_boost": True,
                    "speed": 5.0,  # nested speed: discarded, never validated
                    "temperature": 9,
                },
            }
        )
        assert msg.voice_settings == VoiceSettings(1071)
        assert msg.config.speed is None

    def test_voice_settings_validated(self) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            cli({"context_id": "c", "voice_settings": {"voice_id": True}})
        assert exc_info.value.field == "voice_settings.voice_id"
        assert exc_info.value.context_id == "c"
        msg = cli({"context_id": "c", "voice_settings": {"cfg_scale": 0.1}})
        assert msg.voice_settings is not None
        assert msg.voice_settings.cfg_scale == 1.2

    def test_update_settings_frame(self) -> None:
        msg = cli(
            {
                "update_settings": {
                    "cfg_scale": 1.5,
                    "temperature": 0.3,
                    "speed": 1.1,
                    "max_new_tokens": 2048,
                    "language": "de",
                    "normalize": True,
                }
            }
        )
        assert msg.update_settings == SettingsUpdate(1.5, 0.3, 2048, "de", True, 1.1)

    def test_update_settings_cfg_scale_clamped(self) -> None:
        msg = cli({"update_settings": {"cfg_scale": 9}})
        assert msg.update_settings == SettingsUpdate(cfg_scale=2.5)

    @pytest.mark.parametrize(
        "key", ["voice_id", "model_id", "sample_rate", "output_format", "project_id",
                "dictionary_ids"]
    )  # fmt: skip
    def test_update_settings_forbidden_keys(self, key: str) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            cli({"update_settings": {key: 1, "speed": 1.0}})
        assert key in exc_info.value.message
        assert exc_info.value.message.startswith("Invalid settings update")
        assert exc_info.value.field == f"update_settings.{key}"
        assert exc_info.value.error_code == "VALIDATION_ERROR"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"speed": 2}, "update_settings.speed"),
            ({"temperature": 1.5}, "update_settings.temperature"),
            ({"max_new_tokens": 0}, "update_settings.max_new_tokens"),
            ({"language": "de-DE"}, "update_settings.language"),
            ({"normalize": "yes"}, "update_settings.normalize"),
        ],
    )
    def test_update_settings_out_of_range(self, body: dict[str, Any], field: str) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            cli({"update_settings": body})
        assert exc_info.value.field == field
        assert exc_info.value.message.startswith("Invalid settings update: ")

    def test_update_settings_not_an_object(self) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            cli({"update_settings": [1]})
        assert exc_info.value.field == "update_settings"

    def test_context_id_on_errors(self) -> None:
        with pytest.raises(RemoteProtocolError) as exc_info:
            cli({"context_id": "ctx9", "text": 5})
        assert exc_info.value.field == "text"
        assert exc_info.value.context_id == "ctx9"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"sample_rate": 12345}, "sample_rate"),
        ({"sample_rate": "24000"}, "sample_rate"),
        ({"speed": 2}, "speed"),
        ({"speed": 0.5}, "speed"),
        ({"language": "de-DE"}, "language"),
        ({"language": "xx"}, "language"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_new_tokens": 4096}, "max_new_tokens"),
        ({"output_format": "mp3_44100"}, "output_format"),
        ({"voice_id": 1.5}, "voice_id"),
        ({"voice_id": ""}, "voice_id"),
        ({"voice_id": False}, "voice_id"),
        ({"model_id": ""}, "model_id"),
        ({"normalize": 1}, "normalize"),
        ({"dictionary_ids": list(range(51))}, "dictionary_ids"),
        ({"dictionary_ids": [1, "2"]}, "dictionary_ids[1]"),
        ({"chunk_length_schedule": []}, "chunk_length_schedule"),
        ({"chunk_length_schedule": [5, 0]}, "chunk_length_schedule[1]"),
        ({"auto_mode": "true"}, "auto_mode"),
        ({"inactivity_timeout": 181}, "inactivity_timeout"),
        ({"flush": "yes"}, "flush"),
        ({"cancel": 1}, "cancel"),
        ({"text": ["a"]}, "text"),
        ({"context_id": 3}, "context_id"),
        ({"voice_settings": "x"}, "voice_settings"),
    ],
)
def test_client_field_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        cli(obj)
    assert exc_info.value.field == field


def test_cfg_scale_clamped_not_rejected() -> None:
    assert cli({"cfg_scale": 9}).config.cfg_scale == 2.5
    assert cli({"cfg_scale": 0}).config.cfg_scale == 1.2
    assert cli({"cfg_scale": 1.7}).config.cfg_scale == 1.7


def test_model_legacy_alias() -> None:
    assert cli({"model": "kugel-2"}).config.model_id == "kugel-2"
    assert cli({"model": "kugel-2", "model_id": "kugel-3"}).config.model_id == "kugel-3"


def test_config_build_is_local() -> None:
    with pytest.raises(LocalProtocolError) as exc_info:
        Config.build(sample_rate=12345)
    assert exc_info.value.field == "sample_rate"
    with pytest.raises(LocalProtocolError):
        Config.build(no_such_field=1)
    assert Config.build(cfg_scale=9).cfg_scale == 2.5
    with pytest.raises(LocalProtocolError) as exc_info:
        SettingsUpdate.build(voice_id=3)
    assert "voice_id" in exc_info.value.message
    with pytest.raises(LocalProtocolError):
        SettingsUpdate.build()


def test_client_message_to_json_shapes() -> None:
    msg = ClientMessage(
        text="hi",
        flush=True,
        context_id="c",
        config=Config(voice_id=1),
        voice_settings=VoiceSettings(2),
    )
    assert json.loads(msg.to_json()) == {
        "text": "hi",
        "context_id": "c",
        "voice_id": 1,
        "voice_settings": {"voice_id": 2},
        "flush": True,
    }
    assert json.loads(ClientMessage(close=True).to_json()) == {"close": True}


# =============================================================================================
# Round trip: parse(x.to_json()) == x

finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
uint = st.integers(min_value=0, max_value=2**53)
ctx_ids = st.text(min_size=1, max_size=20)
opt_ctx = st.none() | ctx_ids

usages = st.builds(
    lambda secs, chars, cost, model: Usage(
        secs,
        chars,
        cost,
        None if cost is None else "eur",
        cost is None,
        model,
    ),
    finite,
    st.none() | uint,
    st.none() | st.floats(-1e6, 1e6, allow_nan=False),
    st.none() | st.text(max_size=10),
)
audio_frames = st.builds(
    lambda data, enc, idx, sr, chunk, ctx: AudioFrame.from_bytes(
        # PCM16 is whole samples (an odd payload is refused when parsed)
        data[: len(data) & ~1] if enc == "pcm_s16le" else data,
        enc=enc, idx=idx, sr=sr, chunk_id=chunk, context_id=ctx,
    ),
    st.binary(max_size=64),
    st.sampled_from(["pcm_s16le", "mulaw", "alaw"]),
    uint,
    st.integers(min_value=1, max_value=2**53),
    st.none() | uint,
    opt_ctx,
)


@st.composite
def word_lists(draw: st.DrawFn) -> tuple[WordTimestamp, ...]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, 10_000) | finite)
        end = start + draw(st.integers(0, 1000) | finite)
        cs = draw(st.integers(0, 1000))
        out.append(
            WordTimestamp(
                draw(st.text(max_size=8)),
                start,
                end,
                cs,
                cs + draw(st.integers(0, 20)),
                draw(st.floats(0, 1)),
            )
        )
    return tuple(out)


json_scalar_safe = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5)
server_frames = st.one_of(
    audio_frames,
    st.builds(WordTimestampsFrame, word_lists(), st.none() | uint, opt_ctx),
    st.builds(GenerationStartedFrame, uint, st.text(max_size=30), opt_ctx),
    st.builds(ChunkCompleteFrame, uint, finite, finite, opt_ctx),
    st.builds(
        FinalFrame,
        context_id=opt_ctx,
        total_audio_seconds=st.none() | finite,
        total_text_chunks=st.none() | uint,
        total_audio_chunks=st.none() | uint,
        chunks=st.none() | uint,
        total_samples=st.none() | uint,
        dur_ms=st.none() | finite,
        gen_ms=st.none() | finite,
        rtf=st.none() | finite,
        debug=st.none() | st.dictionaries(st.text(max_size=5), json_scalar_safe, max_size=3),
        usage=st.none() | usages,
    ),
    st.builds(
        SessionClosedFrame,
        st.none() | finite,
        st.none() | uint,
        st.none() | uint,
        st.none() | usages,
    ),
    st.builds(InterruptedFrame, opt_ctx),
    st.builds(
        SettingsUpdatedFrame,
        st.fixed_dictionaries({k: json_scalar_safe for k in SETTINGS_KEYS}),
    ),
    st.builds(
        ErrorFrame,
        st.text(min_size=1, max_size=30),
        st.none() | st.text(max_size=20),
        st.none() | st.integers(0, 599),
        opt_ctx,
        st.none() | st.text(max_size=10),
        st.none() | finite,
    ),
    st.builds(WarningFrame, st.text(max_size=30), opt_ctx),
    st.builds(ContextCreatedFrame, ctx_ids),
    st.builds(ContextClosedFrame, ctx_ids, st.none() | usages),
    st.builds(ContextTimeoutFrame, ctx_ids),
    st.builds(SessionStartedFrame, st.none() | st.text(max_size=10)),
    st.builds(IsFinalFrame, opt_ctx),
)


@settings(max_examples=400, deadline=None)
@given(server_frames)
def test_server_round_trip(frame: Any) -> None:
    text = frame.to_json()
    parsed = parse_server_message(text)
    assert parsed == frame
    assert type(parsed) is type(frame)
    assert parsed.to_json() == text


@FAST
@given(audio_frames)
def test_audio_round_trip_data(frame: AudioFrame) -> None:
    parsed = parse_server_message(frame.to_json())
    assert parsed.data == frame.data
    assert parsed.samples == frame.samples


configs = st.builds(
    Config,
    voice_id=st.none() | st.integers(0, 10**6) | st.text(min_size=1, max_size=8),
    model_id=st.none() | st.sampled_from(["kugel-3", "kugel-2.5", "kugel-1-turbo"]),
    cfg_scale=st.none() | st.floats(1.2, 2.5),
    temperature=st.none() | st.floats(0, 1),
    max_new_tokens=st.none() | st.integers(1, 2048),
    sample_rate=st.none() | st.sampled_from([8000, 16000, 22050, 24000, 44100]),
    output_format=st.none() | st.sampled_from(["pcm_8000", "ulaw_8000", "alaw_8000"]),
    normalize=st.none() | st.booleans(),
    language=st.none() | st.sampled_from(["en", "de", "yue", "zh"]),
    speed=st.none() | st.floats(0.8, 1.2),
    word_timestamps=st.none() | st.booleans(),
    speaker_prefix=st.none() | st.booleans(),
    project_id=st.none() | st.integers(0, 10**6),
    dictionary_ids=st.none() | st.lists(st.integers(0, 10**6), max_size=50).map(tuple),
    flush_timeout_ms=st.none() | st.integers(0, 600_000),
    max_buffer_length=st.none() | st.integers(1, 10_000),
    chunk_length_schedule=st.none()
    | st.lists(st.integers(1, 500), min_size=1, max_size=5).map(tuple),
    auto_mode=st.none() | st.booleans(),
    inactivity_timeout=st.none() | st.floats(0.001, 180),
)
client_messages = st.builds(
    ClientMessage,
    text=st.none() | st.text(max_size=30),
    flush=st.booleans(),
    context_id=opt_ctx,
    config=configs,
    voice_settings=st.none()
    | st.builds(
        VoiceSettings,
        st.none() | st.integers(0, 10**6),
        st.none() | st.floats(1.2, 2.5),
        st.none() | st.integers(1, 2048),
    ),
    update_settings=st.none()
    | st.builds(
        SettingsUpdate,
        st.none() | st.floats(1.2, 2.5),
        st.none() | st.floats(0, 1),
        st.none() | st.integers(1, 2048),
        st.none() | st.sampled_from(["en", "fr"]),
        st.none() | st.booleans(),
        st.none() | st.floats(0.8, 1.2),
    ),
    cancel=st.booleans(),
    close=st.booleans(),
    close_socket=st.booleans(),
    close_context=st.booleans(),
    immediate=st.booleans(),
    keep_alive=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(client_messages)
def test_client_round_trip(msg: ClientMessage) -> None:
    assert parse_client_message(msg.to_json()) == msg
