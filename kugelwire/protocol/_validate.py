"""Strict little type checkers for JSON values, raising errors that name the field.

Every checker takes the error class to raise so the same code validates what a peer sent
(:class:`RemoteProtocolError`) and what the application asked us to send
(:class:`LocalProtocolError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._errors import ProtocolError

__all__ = [
    "ErrT",
    "opt_bool",
    "opt_float",
    "opt_int",
    "opt_str",
    "req_str",
]

ErrT = type[ProtocolError]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def bad(err: ErrT, field: str, expected: str, value: object) -> ProtocolError:
    return err(f"{field}: expected {expected}, got {_type_name(value)}", field=field)


def opt_bool(obj: Mapping[str, Any], key: str, err: ErrT, prefix: str = "") -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad(err, prefix + key, "a boolean", value)
    return value


def opt_int(
    obj: Mapping[str, Any],
    key: str,
    err: ErrT,
    *,
    lo: int | None = None,
    hi: int | None = None,
    prefix: str = "",
) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        # Accept integral floats such as 24000.0: JSON has one number type.
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        else:
            raise bad(err, prefix + key, "an integer", value)
    check_range(value, prefix + key, err, lo, hi)
    return value


def opt_float(
    obj: Mapping[str, Any],
    key: str,
    err: ErrT,
    *,
    lo: float | None = None,
    hi: float | None = None,
    prefix: str = "",
) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(err, prefix + key, "a number", value)
    try:
        f = float(value)
    except OverflowError:  # a JSON integer beyond float range
        f = math.inf
    if not math.isfinite(f):
        raise err(f"{prefix}{key}: expected a finite number", field=prefix + key)
    check_range(f, prefix + key, err, lo, hi)
    return f


def check_range(value: float, field: str, err: ErrT, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        shown = f"{value:g}" if isinstance(value, float) else _short_int(value)
        raise err(f"{field}: out of range ({shown} not in [{lo_s}, {hi_s}])", field=field)


def _short_int(value: int) -> str:
    return str(value) if value.bit_length() < 100 else f"an integer of {value.bit_length()} bits"


def opt_str(obj: Mapping[str, Any], key: str, err: ErrT, prefix: str = "") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(err, prefix + key, "a string", value)
    return value


def req_str(obj: Mapping[str, Any], key: str, err: ErrT, prefix: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise bad(err, prefix + key, "a string", value)
    return value
