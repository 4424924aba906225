"""Table-driven ITU-T G.711 µ-law / A-law codecs (``ulaw_8000``, ``alaw_8000``;
protocol.md#audio-formats).

The algorithms are the classic public-domain Sun Microsystems ``g711.c`` ones:

* µ-law: magnitude clipped to 32635, bias 0x84 added, 3-bit segment + 4-bit mantissa, all bits
  inverted.  Zero encodes to 0xFF; -1 encodes to 0x7F ("negative zero"), which decodes to 0.
* A-law: the 13 most significant bits, 3-bit segment + 4-bit mantissa, even bits toggled with
  0x55 (0xD5 for non-negative values).  Zero encodes to 0xD5.

PCM is always signed 16-bit little-endian, whatever the host's byte order.  Every table is built
once at import: two 256-entry decode tables and two 65536-byte encode tables indexed by the
*unsigned* 16-bit sample value.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable

from ._errors import LocalProtocolError

__all__ = [
    "alaw_decode",
    "alaw_decode_sample",
    "alaw_encode",
    "alaw_encode_sample",
    "ulaw_decode",
    "ulaw_decode_sample",
    "ulaw_encode",
    "ulaw_encode_sample",
]

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_BIG_ENDIAN = sys.byteorder == "big"

_A_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit sample to a µ-law byte (reference implementation)."""
    if sample < 0:
        sign = 0x80
        sample = -sample
    else:
        sign = 0
    if sample > _ULAW_CLIP:
        sample = _ULAW_CLIP
    sample += _ULAW_BIAS
    # exponent = position of the highest set bit among bits 7..14, minus 7
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not (sample & mask):
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode_sample(byte: int) -> int:
    """Decode one µ-law byte to a signed 16-bit sample (reference implementation)."""
    u = ~byte & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t <<= (u & 0x70) >> 4
    return _ULAW_BIAS - t if u & 0x80 else t - _ULAW_BIAS


def alaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit sample to an A-law byte (reference implementation)."""
    pcm = sample >> 3  # arithmetic shift: 13-bit value
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = 0
    while seg < 8 and pcm > _A_SEG_END[seg]:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def alaw_decode_sample(byte: int) -> int:
    """Decode one A-law byte to a signed 16-bit sample (reference implementation)."""
    a = byte ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if a & 0x80 else -t


def _signed(u: int) -> int:
    return u - 0x10000 if u & 0x8000 else u


def _decode_table(fn: Callable[[int], int]) -> tuple[bytes, ...]:
    return tuple(int(fn(b)).to_bytes(2, "little", signed=True) for b in range(256))


def _encode_table(fn: Callable[[int], int]) -> bytes:
    return bytes(int(fn(_signed(u))) for u in range(0x10000))


_ULAW_DEC: tuple[bytes, ...] = _decode_table(ulaw_decode_sample)
_ALAW_DEC: tuple[bytes, ...] = _decode_table(alaw_decode_sample)
_ULAW_ENC: bytes = _encode_table(ulaw_encode_sample)
_ALAW_ENC: bytes = _encode_table(alaw_encode_sample)


def _samples(pcm16le: bytes | bytearray | memoryview) -> memoryview | array[int]:
    """The unsigned 16-bit samples of little-endian PCM, in host order."""
    view = memoryview(pcm16le).cast("B")
    if len(view) % 2:
        raise LocalProtocolError(f"PCM16 data must have an even length, got {len(view)} bytes")
    if not _BIG_ENDIAN:
        return view.cast("H")
    samples = array("H")
    samples.frombytes(view)
    samples.byteswap()
    return samples


def ulaw_encode(pcm16le: bytes | bytearray | memoryview) -> bytes:
    """PCM signed 16-bit little-endian → G.711 µ-law (one byte per sample)."""
    return bytes(map(_ULAW_ENC.__getitem__, _samples(pcm16le)))


def alaw_encode(pcm16le: bytes | bytearray | memoryview) -> bytes:
    """PCM signed 16-bit little-endian → G.711 A-law (one byte per sample)."""
    return bytes(map(_ALAW_ENC.__getitem__, _samples(pcm16le)))


def ulaw_decode(data: bytes | bytearray | memoryview) -> bytes:
    """G.711 µ-law → PCM signed 16-bit little-endian (two bytes per sample)."""
    return b"".join(map(_ULAW_DEC.__getitem__, memoryview(data).cast("B")))


def alaw_decode(data: bytes | bytearray | memoryview) -> bytes:
    """G.711 A-law → PCM signed 16-bit little-endian (two bytes per sample)."""
    return b"".join(map(_ALAW_DEC.__getitem__, memoryview(data).cast("B")))
