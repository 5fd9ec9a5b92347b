"""Recognise image bytes by their magic numbers (never by a file name or a Content-Type)."""

from __future__ import annotations

from typing import NamedTuple

from nanogpt_async._errors import InvalidImageError

__all__ = ["ImageKind", "checked_image", "sniff_image"]


class ImageKind(NamedTuple):
    """An image format NanoGPT accepts and returns."""

    mime: str
    extension: str


PNG = ImageKind("image/png", ".png")
JPEG = ImageKind("image/jpeg", ".jpg")
WEBP = ImageKind("image/webp", ".webp")
GIF = ImageKind("image/gif", ".gif")

#: File suffixes accepted for each kind when a caller names the file.
SUFFIXES: dict[ImageKind, frozenset[str]] = {
    PNG: frozenset({".png"}),
    JPEG: frozenset({".jpg", ".jpeg", ".jpe"}),
    WEBP: frozenset({".webp"}),
    GIF: frozenset({".gif"}),
}


def sniff_image(data: bytes | memoryview) -> ImageKind | None:
    """Return the image kind of ``data`` from its first bytes, or ``None`` if it is no image."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    return None


def checked_image(data: bytes, what: str) -> ImageKind:
    """The kind of ``data``, or `InvalidImageError` saying what it looks like instead."""
    kind = sniff_image(data)
    if kind is None:
        head = data[:64].decode("utf-8", "replace").strip()
        looks = "an HTML page" if head.lower().startswith(("<!doctype", "<html")) else repr(head)
        raise InvalidImageError(f"{what} is not a PNG/JPEG/WebP/GIF image; it starts as {looks}")
    return kind
