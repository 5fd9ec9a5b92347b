"""Input images for image-to-image, edits and inpainting: paths, bytes or data URLs, checked early.

NanoGPT takes input images only as ``data:image/<type>;base64,...`` URLs and does not fetch
remote URLs itself. Its endpoint reference says an input must be "4 MB or smaller *after
encoding*": the limit applies to the data URL, so base64's third more counts, and the largest
image that fits is about 3 MB. Everything here fails *before* a request is sent, so a bad input
never costs money.
"""

from __future__ import annotations

import binascii
import os
import re
from pathlib import Path

import anyio.to_thread
import httpx

from nanogpt_async._codec import b64decode, b64encode
from nanogpt_async._errors import ImageInputError
from nanogpt_async._sniff import sniff_image
from nanogpt_async._types import ImageInput

__all__ = [
    "MAX_INPUT_IMAGE_BYTES",
    "data_url_length",
    "fetch_image_data_url",
    "image_data_url",
    "image_data_url_async",
    "parse_data_url",
]

#: NanoGPT's limit on each input image, measured after encoding: the data URL's length.
MAX_INPUT_IMAGE_BYTES = 4 * 1024 * 1024

_DATA_URL = re.compile(r"^data:image/(jpeg|jpg|png|webp|gif);base64,", re.IGNORECASE)
_SUPPORTED = "PNG, JPEG, WebP or GIF"
# The shortest prefix we emit ("data:image/png;base64,"): a lower bound for a size pre-check.
_SHORTEST_MIME = "image/png"


def data_url_length(size: int, mime: str = _SHORTEST_MIME) -> int:
    """Length of the data URL of ``size`` image bytes of type ``mime`` (what NanoGPT measures)."""
    return len(f"data:{mime};base64,") + 4 * ((size + 2) // 3)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.2f} MB"


def _too_large(what: str, size: int, encoded: int) -> ImageInputError:
    return ImageInputError(
        f"{what} is {_mb(size)}, {_mb(encoded)} as a data URL; NanoGPT accepts at most "
        f"{_mb(MAX_INPUT_IMAGE_BYTES)} per input image after encoding (base64 adds a third, so "
        f"about {_mb(MAX_INPUT_IMAGE_BYTES * 3 // 4)} of image). Resize or recompress it "
        "(e.g. JPEG)."
    )


def _check(data: bytes, what: str) -> str:
    """Return the data URL for ``data`` after checking size and type."""
    kind = sniff_image(data)
    if kind is None:
        if data_url_length(len(data)) > MAX_INPUT_IMAGE_BYTES:
            raise _too_large(what, len(data), data_url_length(len(data)))
        raise ImageInputError(
            f"{what} is not a {_SUPPORTED} image (its first bytes are {data[:8]!r}); "
            "convert it to one of those formats"
        )
    encoded = data_url_length(len(data), kind.mime)
    if encoded > MAX_INPUT_IMAGE_BYTES:
        raise _too_large(what, len(data), encoded)
    return f"data:{kind.mime};base64,{b64encode(data)}"


def parse_data_url(url: str, what: str = "image") -> bytes:
    """Decode an image data URL, checking its form; returns the image bytes.

    Raises:
        ImageInputError: not a ``data:image/<jpeg|png|webp|gif>;base64,`` URL, or bad base64.
    """
    match = _DATA_URL.match(url)
    if match is None:
        head = url[:40] + ("..." if len(url) > 40 else "")
        raise ImageInputError(
            f"{what} data URL must look like 'data:image/png;base64,...' with type jpeg, png, "
            f"webp or gif; got {head!r}"
        )
    # Over the limit as given is over it whatever it decodes to: refuse before decoding.
    if len(url) > MAX_INPUT_IMAGE_BYTES:
        raise _too_large(what, len(url) * 3 // 4, len(url))
    payload = url[match.end() :]
    try:
        return b64decode(payload)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{what} data URL has invalid base64: {exc}") from None


def image_data_url(image: ImageInput, what: str = "image") -> str:
    """Turn a path, bytes or data URL into a checked data URL (blocking; see the async variant).

    The MIME type comes from the bytes, not the file name.

    Raises:
        ImageInputError: unreadable file, over 4 MB, not a PNG/JPEG/WebP/GIF, a remote URL.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _check(bytes(image), what)
    if isinstance(image, str):
        if image.startswith("data:"):
            return _check(parse_data_url(image, what), what)
        if image.startswith(("http://", "https://")):
            raise ImageInputError(
                f"{what} is a remote URL, and NanoGPT does not fetch URLs. Download it first: "
                "`await nanogpt_async.fetch_image_data_url(url)` returns a data URL to pass here"
            )
    if not isinstance(image, (str, os.PathLike)):
        raise ImageInputError(
            f"{what} must be a file path, bytes or a data URL, not {type(image).__name__}"
        )
    path = Path(image)
    try:
        size = path.stat().st_size
        if data_url_length(size) > MAX_INPUT_IMAGE_BYTES:
            raise _too_large(f"{what} {str(path)!r}", size, data_url_length(size))
        data = path.read_bytes()
    except OSError as exc:
        raise ImageInputError(
            f"cannot read {what} file {str(path)!r}: {exc.strerror or exc}"
        ) from None
    return _check(data, f"{what} {str(path)!r}")


async def image_data_url_async(image: ImageInput, what: str = "image") -> str:
    """`image_data_url` in a worker thread: file reads and base64 never block the loop."""
    if isinstance(image, (bytes, str)) and len(image) < 64 * 1024:
        return image_data_url(image, what)
    return await anyio.to_thread.run_sync(image_data_url, image, what)


async def fetch_image_data_url(
    url: str,
    *,
    timeout: float = 30.0,
    max_bytes: int = MAX_INPUT_IMAGE_BYTES,
    http_client: httpx.AsyncClient | None = None,
) -> str:
    """Download a remote image and return it as a data URL for ``image=``/``images=``/``mask=``.

    NanoGPT does not fetch URLs itself; this does what its docs ask users to do by hand. No API
    key is sent. Redirects are followed.

    Example:
        >>> url = await fetch_image_data_url("https://example.com/cat.png")  # doctest: +SKIP
        >>> await client.images.generate(prompt="as a painting", image=url)  # doctest: +SKIP

    Raises:
        ImageInputError: the download failed, is too large, or is not an image.
    """
    shown = url.split("?", maxsplit=1)[0]  # the query may hold a signature
    own = http_client is None
    client = http_client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)
    chunks: list[bytes] = []
    total = 0
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ImageInputError(
                    f"downloading input image {shown!r} failed: HTTP {response.status_code}"
                )
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise ImageInputError(
                        f"input image {shown!r} is over {_mb(max_bytes)}, "
                        "NanoGPT's limit; resize or recompress it"
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ImageInputError(f"downloading input image {shown!r} failed: {exc!r}") from None
    finally:
        if own:
            await client.aclose()
    return await anyio.to_thread.run_sync(_check, b"".join(chunks), f"image from {shown!r}")
