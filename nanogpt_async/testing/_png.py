"""Real, decodable PNG files made with the standard library only (zlib + struct).

The fake server must hand out images that a user's code can open, yet stay cheap to
produce at benchmark rates. Two shapes:

* small (default): a 64x64 RGB gradient whose colours come from a hash of a text, so
  every (prompt, request, index) gets a visibly different picture of a few hundred bytes;
* sized: roughly ``size`` bytes of pseudo-random pixels stored in uncompressed deflate
  blocks. Random pixels cannot shrink, so the file really is that big. The pixel data is
  built once per size and cached; only a ``tEXt`` chunk changes per image, which keeps
  every file distinct without rebuilding megabytes each time.

Layout: signature, IHDR, tEXt, then IDAT and IEND. The tEXt chunk is padded so that the
part before IDAT is a multiple of 3 bytes long; base64 of the whole file is then the
base64 of that small head followed by the cached base64 of the big tail, so a
multi-megabyte ``b64_json`` costs a string concatenation, not an encode.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
import struct
import zlib

__all__ = ["PNG_SIGNATURE", "make_png", "make_png_b64"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_SMALL_SIDE = 64
# A wide row keeps the per-row filter byte overhead negligible for big images.
_SIZED_WIDTH = 256
_RGB = 3
# Signature, IHDR, IEND and the fixed parts of IDAT/tEXt chunks, plus zlib framing.
_FIXED_OVERHEAD = 8 + 25 + 12 + 12 + 12 + 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _ihdr(width: int, height: int) -> bytes:
    # 8-bit depth, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def _head(ihdr: bytes, text: str) -> bytes:
    """Signature, IHDR and a tEXt chunk padded to make the whole a multiple of 3 bytes."""
    # tEXt is Latin-1 by the PNG spec; anything else is replaced rather than rejected.
    payload = b"Comment\x00" + text.encode("latin-1", "replace")
    unpadded = len(PNG_SIGNATURE) + len(ihdr) + 12 + len(payload)
    payload += b" " * (-unpadded % 3)
    return PNG_SIGNATURE + ihdr + _chunk(b"tEXt", payload)


_IEND = _chunk(b"IEND", b"")
_SMALL_IHDR = _ihdr(_SMALL_SIDE, _SMALL_SIDE)


def _small_idat(text: str) -> bytes:
    """IDAT of a 64x64 gradient coloured from a hash of ``text``."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
    r0, g0, b0, r1, g1, b1 = digest[:6]
    rows = []
    for y in range(_SMALL_SIDE):
        # Vertical gradient between two hash-derived colours; each row is one colour so
        # the Python loop runs 64 times, not 4096.
        t = y / (_SMALL_SIDE - 1)
        pixel = bytes(
            (
                round(r0 + (r1 - r0) * t),
                round(g0 + (g1 - g0) * t),
                round(b0 + (b1 - b0) * t),
            )
        )
        rows.append(b"\x00" + pixel * _SMALL_SIDE)
    return _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))


@functools.lru_cache(maxsize=4)
def _sized_parts(size: int) -> tuple[bytes, bytes, str]:
    """IHDR, IDAT + IEND, and the latter's base64, of about ``size`` bytes in all."""
    row_len = 1 + _SIZED_WIDTH * _RGB
    # Stored deflate blocks cost 5 bytes per 65535 bytes of data.
    budget = max(row_len, size - _FIXED_OVERHEAD)
    height = max(1, round(budget / (row_len * (1 + 5 / 65535))))
    pixels = random.Random(size).randbytes(height * _SIZED_WIDTH * _RGB)
    stride = _SIZED_WIDTH * _RGB
    raw = b"".join(
        b"\x00" + pixels[offset : offset + stride] for offset in range(0, len(pixels), stride)
    )
    tail = _chunk(b"IDAT", zlib.compress(raw, 0)) + _IEND
    return _ihdr(_SIZED_WIDTH, height), tail, base64.b64encode(tail).decode("ascii")


def make_png(text: str, size: int | None = None) -> bytes:
    """Return a valid PNG that embeds ``text`` in a ``tEXt`` chunk.

    Args:
        text: What makes this image unique (e.g. prompt, request number and index). It
            also seeds the colours of small images.
        size: ``None`` for a small 64x64 image; otherwise the approximate file size in
            bytes of an image made of pseudo-random pixels.

    Returns:
        The PNG file's bytes.

    Example:
        >>> make_png("a cat #1")[1:4]
        b'PNG'
    """
    if size is None:
        return _head(_SMALL_IHDR, text) + _small_idat(text) + _IEND
    ihdr, tail, _ = _sized_parts(size)
    return _head(ihdr, text) + tail


def make_png_b64(text: str, size: int | None = None) -> str:
    """Return ``base64(make_png(text, size))``, fast for big images (see the module doc)."""
    if size is None:
        return base64.b64encode(make_png(text)).decode("ascii")
    ihdr, _, tail_b64 = _sized_parts(size)
    return base64.b64encode(_head(ihdr, text)).decode("ascii") + tail_b64
