"""Typed views of NanoGPT's responses.

Frozen dataclasses, parsed liberally: unknown fields are kept in ``raw`` and never rejected, and
one malformed image item does not throw away the paid-for items beside it (its ``read()``
raises instead).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from nanogpt_async._codec import OFFLOAD_THRESHOLD, b64decode
from nanogpt_async._errors import (
    APIResponseValidationError,
    InvalidImageError,
    InvalidInputError,
    redact_url,
)
from nanogpt_async._output._files import write_atomic_async
from nanogpt_async._sniff import SUFFIXES, ImageKind, checked_image

__all__ = [
    "Balance",
    "GeneratedImage",
    "ImageModel",
    "ImagesResponse",
    "ModelCapabilities",
    "cost_or_none",
]


class Downloader(Protocol):
    """Fetches a signed image URL (implemented by the client's key-free download path)."""

    async def download_image(self, url: str) -> bytes:
        """Return the image bytes at ``url``."""
        ...


#: An answer may carry more images than ``n`` asked for (some models return a fixed count),
#: but not without bound: 40 signed URLs of 20 MB for ``n=1`` made a batch hold 855 MB.
MIN_IMAGES_ALLOWED = 4


def _float_or_none(value: object) -> float | None:
    """A finite float from a JSON number or numeric string; ``None`` for anything else.

    Never raises: a 400-digit integer overflows ``float()`` and ``"NaN"``/``"Infinity"`` parse
    to non-finite floats; all of them are "unknown" rather than a crash or a poisoned total.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def cost_or_none(value: object) -> float | None:
    """What the server says a request cost: a finite, non-negative float, or ``None`` (unknown).

    The rule for ``cost`` (and prices): a JSON number or numeric string that is finite and
    ``>= 0`` is kept; a missing, non-numeric, negative, ``NaN``, infinite or overflowing value
    is unknown. Never raises, and never yields a value the manifest reader would reject.
    """
    number = _float_or_none(value)
    return number if number is not None and number >= 0 else None


def resolve_image_path(path: str | os.PathLike[str], kind: ImageKind) -> Path:
    """``path`` with the extension the bytes call for; a contradicting extension is an error."""
    target = Path(path)
    if not target.suffix:
        return target.with_suffix(kind.extension)
    if target.suffix.lower() not in SUFFIXES[kind]:
        raise InvalidInputError(
            f"{str(target)!r} ends in {target.suffix!r} but the image is "
            f"{kind.mime}; save it as {str(target.with_suffix(kind.extension))!r} "
            "or give a path without an extension"
        )
    return target


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One generated image, as base64 (``b64_json``) or a signed URL (``url``).

    Which one you get depends on the server, not only on ``response_format``: NanoGPT falls back
    to base64 for an item when it cannot sign a URL. ``read()`` and ``save()`` work for both.

    Example:
        >>> image = response.data[0]  # doctest: +SKIP
        >>> png = await image.read()  # doctest: +SKIP
        >>> path = await image.save("out/cat")  # doctest: +SKIP  (-> out/cat.png)
    """

    index: int
    b64_json: str | None = field(default=None, repr=False)
    url: str | None = field(default=None, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _downloader: Downloader | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        if self.b64_json is not None:
            return f"GeneratedImage(index={self.index}, b64_json=<{len(self.b64_json)} chars>)"
        if self.url is not None:
            return f"GeneratedImage(index={self.index}, url={redact_url(self.url)!r})"
        return f"GeneratedImage(index={self.index}, empty)"

    async def read(self) -> bytes:
        """The image bytes: base64 decoded (off the event loop when large) or downloaded.

        URLs are fetched without the API key. Nothing is cached: a second call downloads again.

        Raises:
            InvalidImageError: bad base64, the bytes are no image, or the item had neither field.
            ImageURLExpiredError: the signed URL expired (about an hour after generation).
            ImageDownloadError: the download failed after retries.
        """
        if self.b64_json is not None:
            if len(self.b64_json) > OFFLOAD_THRESHOLD:  # big enough to stall the event loop
                return await anyio.to_thread.run_sync(decoded_image, self.b64_json, self.index)
            return decoded_image(self.b64_json, self.index)
        if self.url is not None:
            if self._downloader is None:
                raise InvalidImageError(
                    f"image {self.index} is a URL but has no client to download it; build it "
                    "through AsyncNanoGPT"
                )
            return await self._downloader.download_image(self.url)
        raise InvalidImageError(
            f"image {self.index} has neither 'url' nor 'b64_json' in NanoGPT's answer: "
            f"{dict(self.raw)!r:.200}"
        )

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image to ``path`` atomically (temp file + rename) and return the path.

        The extension comes from the bytes (``.png``/``.jpg``/``.webp``/``.gif``) when ``path``
        has none; one that contradicts the bytes is refused. Parent folders are created.
        """
        data = await self.read()
        target = resolve_image_path(path, checked_image(data, f"image {self.index}"))
        await write_atomic_async(target, data)
        return target


def decoded_image(b64_json: str, index: int) -> bytes:
    """Image ``index``'s bytes from its base64 (blocking: big ones belong in a worker thread).

    Raises:
        InvalidImageError: bad base64, or the bytes are no image.
    """
    try:
        data = b64decode(b64_json)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise InvalidImageError(
            f"image {index} has invalid base64 ({exc}); it was generated, but its "
            "data is corrupt. Generate it again"
        ) from None
    checked_image(data, f"image {index}")
    return data


@dataclass(frozen=True, slots=True)
class ImagesResponse:
    """The answer to ``images.generate``.

    Attributes:
        created: Unix time of generation.
        data: The images, in order.
        cost: What this request was charged (USD): a finite number >= 0, or ``None`` when
            NanoGPT did not say or said something unusable (not a number, negative, ``NaN``,
            infinite, overflowing): see `cost_or_none`.
        payment_source: Where the money came from (``"USD"``, ``"XNO"``...).
        remaining_balance: The balance after this request, when NanoGPT said.
        request_id: NanoGPT's ``X-Request-ID``.
        raw: The whole JSON answer, for fields this library does not model.
    """

    created: int | None
    data: list[GeneratedImage]
    cost: float | None
    payment_source: str | None
    remaining_balance: float | None
    request_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(
        cls,
        payload: object,
        *,
        request_id: str | None,
        downloader: Downloader | None,
        requested: object = None,
    ) -> ImagesResponse:
        """Parse a generations answer; raise only when there is nothing usable in it.

        ``requested`` is the ``n`` asked for: an answer with more than ``max(n, 4)`` images is
        refused (`APIResponseValidationError`, which says it may have been charged), with
        the whole answer kept in the error's ``body`` so nothing paid for is lost to the caller.
        """
        if not isinstance(payload, Mapping):
            raise APIResponseValidationError(
                f"NanoGPT answered 200 with a JSON {type(payload).__name__}, not an object; "
                "the request may have been charged",
                request_id=request_id,
                body=payload,
            )
        items = payload.get("data")
        cost = cost_or_none(payload.get("cost"))
        if not isinstance(items, list) or not items:
            raise APIResponseValidationError(
                "NanoGPT answered 200 without any image in 'data'"
                + (f" (cost reported: {cost})" if cost is not None else "")
                + "; generate again, and quote the request id to NanoGPT support if charged",
                request_id=request_id,
                body={k: v for k, v in payload.items() if k != "data"},
            )
        wanted = requested if isinstance(requested, int) and requested > 0 else 1
        if len(items) > max(wanted, MIN_IMAGES_ALLOWED):
            raise APIResponseValidationError(
                f"NanoGPT answered with {len(items)} images for n={wanted}; refusing to read "
                f"more than {max(wanted, MIN_IMAGES_ALLOWED)} from one answer (memory is bounded "
                "per request). The request may have been charged: the whole answer is in this "
                "error's body; quote the request id to NanoGPT support",
                request_id=request_id,
                body=dict(payload),
            )
        images = []
        for index, item in enumerate(items):
            entry = item if isinstance(item, Mapping) else {}
            b64 = entry.get("b64_json")
            url = entry.get("url")
            images.append(
                GeneratedImage(
                    index=index,
                    b64_json=b64 if isinstance(b64, str) else None,
                    url=url if isinstance(url, str) and b64 is None else None,
                    raw=entry,
                    _downloader=downloader,
                )
            )
        created = payload.get("created")
        source = payload.get("paymentSource")
        return cls(
            created=created if isinstance(created, int) else None,
            data=images,
            cost=cost,
            payment_source=source if isinstance(source, str) else None,
            remaining_balance=_float_or_none(payload.get("remainingBalance")),
            request_id=request_id,
            raw=payload,
        )

    async def save_all(self, directory: str | os.PathLike[str], stem: str = "image") -> list[Path]:
        """Save every image into ``directory`` as ``{stem}-{index}.{ext}``; return the paths."""
        folder = Path(directory)
        return [await image.save(folder / f"{stem}-{image.index}") for image in self.data]


@dataclass(frozen=True, slots=True)
class ModelCapabilities:
    """What an image model can do."""

    image_generation: bool = True
    image_to_image: bool = False
    inpainting: bool = False
    nsfw: bool = False


@dataclass(frozen=True, slots=True)
class ImageModel:
    """An entry of ``GET /image-models?detailed=true``.

    Attributes:
        id: The model id to pass as ``model=``.
        pricing: USD per image by size key as NanoGPT writes it (``"1024*1024"``).
        resolutions: Sizes the model accepts (``"1024x1024"``, ``"auto"``...).
        max_images: Largest ``n`` per request, when known.
    """

    id: str
    name: str | None = None
    description: str | None = None
    pricing: Mapping[str, float] = field(default_factory=dict)
    currency: str | None = None
    capabilities: ModelCapabilities = field(default_factory=ModelCapabilities)
    resolutions: Sequence[str] = ()
    max_images: int | None = None
    fixed_image_count: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def price_for(self, size: str | None = None) -> float | None:
        """USD per image at ``size`` (``"1024x1024"`` or ``"1024*1024"``), or the lowest price."""
        if not self.pricing:
            return None
        if size is not None:
            key = size.replace("x", "*")
            if key in self.pricing:
                return self.pricing[key]
            if size in self.pricing:
                return self.pricing[size]
        return min(self.pricing.values())

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ImageModel:
        """Parse one catalogue entry liberally."""
        pricing_raw = item.get("pricing")
        pricing: dict[str, float] = {}
        currency = None
        if isinstance(pricing_raw, Mapping):
            per_image = pricing_raw.get("per_image")
            if isinstance(per_image, Mapping):
                for key, value in per_image.items():
                    price = cost_or_none(value)
                    if price is not None:
                        pricing[str(key)] = price
            elif (price := cost_or_none(per_image)) is not None:
                pricing["default"] = price
            cur = pricing_raw.get("currency")
            currency = cur if isinstance(cur, str) else None
        caps = item.get("capabilities")
        caps = caps if isinstance(caps, Mapping) else {}
        params = item.get("supported_parameters")
        params = params if isinstance(params, Mapping) else {}
        resolutions = params.get("resolutions")
        max_images = params.get("max_images")
        fixed = params.get("fixed_image_count")
        name, description = item.get("name"), item.get("description")
        return cls(
            id=str(item.get("id", "")),
            name=name if isinstance(name, str) else None,
            description=description if isinstance(description, str) else None,
            pricing=pricing,
            currency=currency,
            capabilities=ModelCapabilities(
                image_generation=bool(caps.get("image_generation", True)),
                image_to_image=bool(caps.get("image_to_image", False)),
                inpainting=bool(caps.get("inpainting", False)),
                nsfw=bool(caps.get("nsfw", False)),
            ),
            resolutions=tuple(
                str(r.get("value", r)) if isinstance(r, Mapping) else str(r)
                for r in (resolutions if isinstance(resolutions, list) else [])
            ),
            max_images=max_images if isinstance(max_images, int) else None,
            fixed_image_count=_image_count(fixed, max_images),
            raw=item,
        )


def _image_count(value: object, max_images: object) -> int | None:
    """``fixed_image_count`` read liberally (an int, ``"2"``, ``2.0``), else ``None``.

    ``True`` (what a catalogue sending a flag means) is a count fixed at ``max_images``.
    """
    if value is True:
        value = max_images
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdecimal() else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _decimal(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


@dataclass(frozen=True, slots=True)
class Balance:
    """The account balance from ``POST /api/check-balance``; amounts are exact ``Decimal``."""

    usd_balance: Decimal | None
    nano_balance: Decimal | None
    nano_deposit_address: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, payload: object, *, request_id: str | None = None) -> Balance:
        """Parse the check-balance answer."""
        if not isinstance(payload, Mapping):
            raise APIResponseValidationError(
                "check-balance answered with something other than a JSON object",
                request_id=request_id,
                body=payload,
            )
        address = payload.get("nanoDepositAddress")
        return cls(
            usd_balance=_decimal(payload.get("usd_balance")),
            nano_balance=_decimal(payload.get("nano_balance")),
            nano_deposit_address=address if isinstance(address, str) else None,
            raw=payload,
        )
