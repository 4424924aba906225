"""The fuzz harness's property, run under hypothesis in CI (atheris runs it coverage-guided)."""

from __future__ import annotations

import importlib.util
import pathlib

from hypothesis import given, settings
from hypothesis import strategies as st

_PATH = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_sessions.py"
_spec = importlib.util.spec_from_file_location("fuzz_sessions", _PATH)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["text", "flush", "cancel", "context_id", "audio", "enc", "idx", "sr", "samples", "final",
     "session_closed", "usage", "error", "error_code", "interrupted", "context_created",
     "context_closed", "update_settings", "voice_settings", "voice_id", "sample_rate",
     "close_context", "immediate", "warning", "generation_started", "chunk_id", "word_timestamps"]
)
_frames = st.dictionaries(_keys, _json_values, max_size=5).map(
    lambda d: __import__("json").dumps(d).encode()
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames | st.binary(max_size=60), min_size=1, max_size=6))
def test_sessions_raise_only_protocol_errors(messages: list[bytes]) -> None:
    harness.one_input(b"\x00".join(m.replace(b"\x00", b"") for m in messages))


def test_random_mutations_of_seeds() -> None:
    import random

    rng = random.Random(1234)
    for _ in range(300):
        harness.one_input(harness._random_input(rng))
