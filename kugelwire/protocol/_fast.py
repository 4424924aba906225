"""The fast paths of the protocol core, in one place, and the switch that turns them all off.

Each fast path does, for the usual input, what a plain path through a dependency or a standard
constructor does, in fewer steps; for anything unusual it declines and the plain path decides.
With the switch off (``KUGELWIRE_FAST_PATHS=0`` in the environment when kugelwire is imported,
or :func:`fast_paths` ``(False)`` at run time) every message goes through wsproto, h11,
``json.loads`` and the dataclass constructors, which is how to rule a fast path out when
chasing a bug, and what the differential tests compare against.

========================  ===================================  ===================================
fast path                 replaces (the plain path)            why equivalent; the test
========================  ===================================  ===================================
:func:`text_frames`       wsproto's frame decoder for the      only unmasked FIN text frames with
(``ClientConnection.``    server's single-frame text messages  a minimal length, within the size
``_fast_text``), with     (``_receive_frames`` ->              limit and valid UTF-8; anything
:func:`wsproto_idle`      ``WSConnection.receive_data``)       else goes to wsproto at a frame
                                                               boundary. tests/transports/
                                                               test_fast_path.py
``masked_text_frame``     ``WSConnection.send(TextMessage)``   RFC 6455 5.2 framing of a complete
(:class:`Masks`)          on the client                        message; wsproto keeps no state for
                                                               it. test_fast_path.py (decoded by
                                                               wsproto), test_fast_switch.py
:func:`http_response`     ``h11.Connection.send(Response,      the same bytes (h11 writes the
                          Data, EndOfMessage)`` for the        status line and headers as given).
                          server's HTTP answers                tests/protocol/test_fast_switch.py
:data:`scan_object`       ``json.loads`` (its two Python       the same C scanner; text it does
(parse_server_message,    wrappers)                            not take whole (trailing space)
``_split_audio``)                                              goes to ``json.loads``.
                                                               tests/protocol/test_hot_paths.py
audio split, checked      the JSON scan of an audio frame's    declines on anything unusual (see
audio fields, their       base64, the general field checks     ``_messages._split_audio``,
templates, first-key      (once per template: the fields but   ``_template``, ``_audio_hot``,
dispatch, the checked     ``idx``), the precedence ladder,     ``_parse_object``,
base64 decode, the        the strict decode, the scan and      ``_split_generation_started``).
in-place                  checks of ``generation_started``     test_hot_paths.py
``generation_started``    (``_messages``)
the token shortcut        ``parse_client_message``'s general   a ``{"text"[, "flush"]}`` object
(``_messages``)           field checks (server role)           only. test_fast_switch.py
:func:`audio_json`        ``dumps(AudioFrame.to_dict())`` for  only for frames whose audio is
(``AudioFrame.to_json``)  the server's audio frames (a JSON    base64 by construction or check
                          scan of the whole payload)           (``_checked``): nothing to escape;
                                                               the small fields as ``dumps``.
                                                               test_fast_switch.py
``frozen_constructor``    the frozen dataclass ``__init__``   sets the same slots on a twin of
(``_audio_frame``,        (``object.__setattr__`` per field)   the class's layout, then assigns
``_audio_chunk``)                                              ``__class__``. test_hot_paths.py,
                                                               test_fast_switch.py
========================  ===================================  ===================================

The rows of ``_messages`` stay beside the frames they parse (they are built from its validators
and its table of frame kinds, which would otherwise have to come here); each checks
:data:`ENABLED` itself. The client session's hand-written token message
(``StreamClientSession.send_text``: ``dumps({"text": ...})`` by hand) is not switched;
``tests/protocol/test_hot_paths.py`` compares it with ``dumps``.

``yield_after_audio`` (``ClientConnection``) lives in the fast receive path: with the switch off
no read is held back (the messages and their order are the same; only when a consumer sees the
first audio of a read changes).

Only this module reads private state of a dependency (wsproto's frame decoder, in
:func:`wsproto_idle`); when it is not there (another wsproto version) the fast receive path is
simply not taken.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from os import urandom as _urandom  # the masking key (as wsproto does)
from typing import Any, TypeVar

import h11

__all__ = [
    "Masks",
    "audio_json",
    "audio_text",
    "enabled",
    "fast_paths",
    "frozen_constructor",
    "h11_response",
    "http_response",
    "masked_text_frame",
    "scan_object",
    "text_frame_head",
    "text_frames",
    "wsproto_idle",
]

_T = TypeVar("_T")

#: Whether the fast paths are on (read once, at import, from ``KUGELWIRE_FAST_PATHS``; ``0``,
#: ``false``, ``no`` or ``off`` turn them off). Callers read it on every use; change it with
#: :func:`fast_paths`.
ENABLED: bool = os.environ.get("KUGELWIRE_FAST_PATHS", "1").strip().lower() not in (
    "0", "false", "no", "off"
)


def fast_paths(enabled: bool) -> bool:
    """Turn every fast path of the protocol core on or off (for all connections and sessions,
    from their next message on); returns the previous setting. Off, messages go through
    wsproto, h11, ``json.loads`` and the dataclass constructors: the same events and bytes
    (this is what the differential tests check), more slowly."""
    global ENABLED
    previous, ENABLED = ENABLED, bool(enabled)
    return previous


def enabled() -> bool:
    """Whether the fast paths are on (see :func:`fast_paths`)."""
    return ENABLED


# -- JSON --------------------------------------------------------------------------------------
#: json's C scanner: ``json.loads`` without its two Python-level wrappers. The caller must
#: check that it took the whole text (else ``json.loads`` decides, for the same result).
scan_object: Callable[[str, int], tuple[Any, int]] = getattr(  # noqa: B009 (untyped)
    json.JSONDecoder(), "scan_once"
)


#: The C string encoder ``dumps`` uses (ASCII-safe escaping).
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def audio_json(frame: Any) -> str | None:
    """The text ``dumps(frame.to_dict())`` writes, for an ``AudioFrame`` whose ``audio`` is
    known to be base64 (nothing in it to escape), built without scanning the payload again;
    None for anything unusual (a field that is not an ``int`` / ``str``): ``dumps`` writes it."""
    return audio_text(frame.audio, frame.enc, frame.idx, frame.sr, frame.samples,
                      frame.chunk_id, frame.context_id)


def audio_text(
    audio: str, enc: Any, idx: Any, sr: Any, samples: Any, chunk_id: Any, context_id: Any
) -> str | None:
    """:func:`audio_json` of the frame with these fields (``audio``: base64), with no frame
    built (the server's audio frames go out as this text)."""
    if type(idx) is not int or type(sr) is not int or type(samples) is not int:
        return None
    if type(enc) is not str:
        return None
    text = (
        f'{{"audio":"{audio}","enc":{_json_string(enc)},"idx":{idx},"sr":{sr},'
        f'"samples":{samples}'
    )
    if chunk_id is not None:
        if type(chunk_id) is not int:
            return None
        text += f',"chunk_id":{chunk_id}'
    if context_id is not None:
        if type(context_id) is not str:
            return None
        text += ',"context_id":' + _json_string(context_id)
    return text + "}"


# -- frozen dataclasses ------------------------------------------------------------------------
def frozen_constructor(
    cls: type[_T],
    params: tuple[str, ...],
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, str] | None = None,
) -> Callable[..., _T]:
    """A function ``(*params) -> cls`` that fills the slots of a frozen, slotted dataclass
    directly (the dataclass ``__init__`` goes through ``object.__setattr__`` per field: about
    three times as slow). ``defaults``: default values of trailing ``params``; ``fixed``: the
    other slots, as Python expressions evaluated per call (``"[]"`` makes a fresh list). With
    the fast paths off it calls ``cls(*params)`` (fields not in ``params`` then take the
    dataclass's own defaults).

    The object is made as an instance of a twin of ``cls`` (same bases, same slots, nothing
    else: the same memory layout, and plain attribute stores), filled, then given its class:
    ``cls``. Where the twin's layout is not accepted for that, each slot's descriptor sets it
    instead (about twice as slow)."""
    defaults = dict(defaults or {})
    fixed = dict(fixed or {})
    names = (*params, *fixed)
    twin = _layout_twin(cls)
    namespace: dict[str, Any] = {
        "_cls": cls, "_twin": twin, "_new": object.__new__, "_fast": _module()
    }
    for i, name in enumerate(names):
        namespace[f"_s{i}"] = getattr(cls, name).__set__
    signature = []
    for name in params:
        if name in defaults:
            namespace[f"_d_{name}"] = defaults[name]
            signature.append(f"{name}=_d_{name}")
        else:
            signature.append(name)
    args = ", ".join(params)
    lines = [
        f"def make({', '.join(signature)}):",
        f"    if not _fast.ENABLED: return _cls({args})",
    ]
    values = [*params, *fixed.values()]
    if twin is not None:
        lines.append("    obj = _new(_twin)")
        lines += [f"    obj.{name} = {value}" for name, value in zip(names, values, strict=True)]
        lines.append("    obj.__class__ = _cls")
    else:
        lines.append("    obj = _new(_cls)")
        lines += [f"    _s{i}(obj, {value})" for i, value in enumerate(values)]
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # generated from the names above only
    make: Callable[..., _T] = namespace["make"]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    make.__doc__ = f"``{cls.__name__}({args})``, filling its slots directly."
    return make


def _layout_twin(cls: type[Any]) -> type[Any] | None:
    """A class with ``cls``'s bases and slots and nothing else, whose instances may become
    ``cls`` instances by ``__class__`` assignment (Python allows it between classes of the same
    layout); None where that is refused."""
    slots = cls.__dict__.get("__slots__")
    if slots is None or "__dict__" in cls.__dict__:
        return None
    twin = type(f"_{cls.__name__}Twin", cls.__bases__, {"__slots__": tuple(slots)})
    try:
        probe: Any = object.__new__(twin)
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def _module() -> Any:
    import sys

    return sys.modules[__name__]


# -- WebSocket framing -------------------------------------------------------------------------
class Masks:
    """Masking keys from the OS's strong random source (RFC 6455 section 10.3), fetched 4 KiB at
    a time: one system call per 1,024 frames instead of one per frame."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool, self._pos = b"", 0

    def __call__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool, pos = _urandom(4096), 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


_mask = Masks()


def text_frame_head(size: int) -> bytes:
    """The head of one final, unmasked text frame (RFC 6455 section 5.2) of ``size`` payload
    bytes: what ``WSConnection(SERVER).send(TextMessage(...))`` writes before the payload of
    an OPEN connection (the server adds the payload after it, with no copy of the two)."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big")
    return bytes((0x81, 127)) + size.to_bytes(8, "big")


def masked_text_frame(payload: bytes) -> bytes:
    """One final, masked text frame (RFC 6455 section 5.2) carrying ``payload``: what
    ``WSConnection(CLIENT).send(TextMessage(data=...))`` writes for an OPEN connection."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + n.to_bytes(8, "big")
    mask = _mask()
    if not n:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return head + mask + (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def text_frames(
    rx: bytes | bytearray, view: memoryview, max_size: int
) -> tuple[list[tuple[int, int]], bool]:
    """The payload bounds ``(start, stop)`` of the complete frames at the head of ``rx`` that
    are unmasked, final text frames with clear RSV bits and a minimal length of at most
    ``max_size`` bytes (how a server sends its messages), and whether what follows them is for
    this path too (nothing, or the start of such a frame) rather than for wsproto (control
    frames, fragments, masked or non-minimal frames, too big: wsproto parses, and may reject,
    them)."""
    out: list[tuple[int, int]] = []
    append = out.append
    end = len(rx)
    pos = 0
    while pos < end:
        if rx[pos] != 0x81:
            return out, False
        if pos + 2 > end:
            break
        size = rx[pos + 1]
        if size < 126:
            start = pos + 2
        elif size == 126:  # a 16-bit length (the usual audio frame)
            start = pos + 4
            if start > end:
                break
            size = rx[pos + 2] << 8 | rx[pos + 3]
            if size < 126:
                return out, False
        elif size == 127:
            start = pos + 10
            if start > end:
                break
            size = int.from_bytes(view[pos + 2 : start], "big")
            if size < 65536:
                return out, False
        else:  # masked: wsproto fails the connection
            return out, False
        if size > max_size:
            return out, False
        pos = start + size
        if pos > end:
            break
        append((start, pos))
    return out, True


def wsproto_idle(ws: Any) -> bool:
    """Whether wsproto's connection ``ws`` (``WSConnection``) holds no bytes of a frame and no
    part of a message: the point where the fast receive path may take over. False when its
    internals are not what this version knows (then wsproto always decides)."""
    try:
        proto: Any = getattr(ws.connection, "_proto")  # noqa: B009
        frames, messages = proto._frame_decoder, proto._message_decoder
        return frames.header is None and not frames.buffer.buffer and messages.opcode is None
    except AttributeError:
        return False


# -- HTTP responses ----------------------------------------------------------------------------
def _response_headers(
    headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> list[tuple[bytes, bytes]]:
    out = list(headers)
    if not any(name.lower() == b"content-length" for name, _ in out):
        out.append((b"content-length", str(len(body)).encode("ascii")))
    out.append((b"connection", b"close"))
    return out


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def h11_response(
    conn: h11.Connection, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The plain path of :func:`http_response`: the response written by ``conn``."""
    out = conn.send(
        h11.Response(
            status_code=status, headers=_response_headers(headers, body), reason=_phrase(status)
        )
    )
    if body:
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
    return (out or b"") + (conn.send(h11.EndOfMessage()) or b"")


def http_response(
    conn: h11.Connection, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection: ``Content-Length`` (unless
    ``headers`` has it) and ``Connection: close`` after ``headers``. Written by hand (the same
    bytes as h11, which :func:`h11_response` uses when the fast paths are off)."""
    if not ENABLED:
        return h11_response(conn, status, headers, body)
    lines = [b"HTTP/1.1 %d %s" % (status, _phrase(status))]
    lines += [name + b": " + value for name, value in _response_headers(headers, body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
