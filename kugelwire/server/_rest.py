"""The read-only REST routes of a local server: ``GET /v1/voices``, ``GET /v1/voices/{id}``,
``GET /v1/models``, answered from the engine's voice catalogue.

:func:`rest_handler` returns a :data:`~kugelwire.protocol.RestHandler`; the connection core
checks the API key first (``api_key`` query parameter, ``Authorization: Bearer`` or
``X-API-Key``, as for the sockets) and answers 404 for every other ``/v1/`` path. The JSON is
what the official SDKs' ``client.voices.list()`` / ``.get()`` / ``client.models.list()`` parse;
errors use the service's envelope ``{"error", "error_code", "code"}``. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from ..protocol.config import VoiceCatalogue
from ..protocol.messages import dumps
from ..protocol.ws import RestHandler

__all__ = ["MAX_PAGE", "rest_handler"]

#: The most voices one ``GET /v1/voices`` page returns (``limit``'s maximum).
MAX_PAGE = 100

_Response = tuple[int, list[tuple[bytes, bytes]], bytes]
_JSON = (b"content-type", b"application/json")


def _json(status: int, obj: dict[str, Any]) -> _Response:
    body = dumps(obj).encode("utf-8")
    return status, [_JSON, (b"cache-control", b"no-store")], body


def _error(status: int, error_code: str, message: str) -> _Response:
    return _json(status, {"error": message, "error_code": error_code, "code": status})


def _int_param(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}: out of range ({value} not in [{lo}, {hi}])")
    return value


def rest_handler(catalogue: VoiceCatalogue) -> RestHandler:
    """The REST routes of ``catalogue`` (see the module docstring)."""

    def handle(path: str, query: str) -> _Response | None:
        path = path.rstrip("/") or "/"
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path == "/v1/models":
            return _json(200, catalogue.models_json())
        if path == "/v1/voices":
            try:
                limit = _int_param(params, "limit", 20, 1, MAX_PAGE)
                offset = _int_param(params, "offset", 0, 0, 2**31 - 1)
            except ValueError as exc:
                return _error(400, "VALIDATION_ERROR", str(exc))
            language = params.get("language") or None
            return _json(
                200, catalogue.voices_json(language=language, limit=limit, offset=offset)
            )
        prefix = "/v1/voices/"
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            voice = catalogue.find(path[len(prefix) :])
            if voice is None:
                return _error(404, "NOT_FOUND", "Voice not found")
            return _json(200, voice.to_dict())
        return None

    return handle
