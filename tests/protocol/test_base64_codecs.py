"""The optional pybase64 codec (extra ``fast``) and the stdlib fallback agree exactly."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

pybase64 = pytest.importorskip("pybase64")


def _stdlib_codec() -> object:
    """The fallback codec of kugelwire.protocol._messages, as chosen without pybase64."""
    import importlib

    from kugelwire.protocol import _messages

    real = importlib.import_module

    def no_pybase64(name: str, *args: object) -> object:
        if name == "pybase64":
            raise ImportError(name)
        return real(name, *args)  # type: ignore[arg-type]

    importlib.import_module = no_pybase64  # type: ignore[assignment]
    try:
        return _messages._base64_codec()[1]
    finally:
        importlib.import_module = real


stdlib_decode = _stdlib_codec()


def fast_decode(text: str) -> bytes:
    return pybase64.b64decode(text, validate=True)  # type: ignore[no-any-return]


def outcome(fn: object, text: str) -> object:
    try:
        return fn(text)  # type: ignore[operator]
    except (binascii.Error, ValueError):
        return "error"


EDGE = ["", "AA==", "AAA=", "AAAA", "AA=", "A", "AA==AA==", "AA AA", "AAAA\n", "=AAA", "A===",
        "AAAA====", "ÿÿÿÿ", "AB+/", "AB-_", "AAAA=", "AA==\n"]


@pytest.mark.parametrize("text", EDGE)
def test_edge_cases_agree(text: str) -> None:
    assert outcome(fast_decode, text) == outcome(stdlib_decode, text)


@given(st.binary(max_size=64))
def test_valid_round_trip_agrees(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert fast_decode(text) == stdlib_decode(text) == data
    assert pybase64.b64encode(data) == base64.b64encode(data)


@given(st.text(alphabet="ABCab01+/=-_ \n", max_size=16))
def test_arbitrary_text_agrees(text: str) -> None:
    assert outcome(fast_decode, text) == outcome(stdlib_decode, text)
