"""Deterministic names: item ids and output file names that cannot leave the folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_BODY_FIELDS",
    "IdentityCounter",
    "fingerprint_body",
    "image_file_name",
    "item_tag",
    "public_body",
    "request_digest",
    "safe_path",
    "slugify",
]

#: Characters a plain file name never holds: NUL, the path separators, a Windows drive's colon.
_NOT_IN_PLAIN_NAMES = frozenset(
    {"\0", "/", os.sep, *((os.altsep or "/", ":") if os.name == "nt" else ())}
)
#: JSON fields holding input images as data URLs.
IMAGE_BODY_FIELDS = ("imageDataUrl", "imageDataUrls", "maskDataUrl")
#: Fields that change how an answer is delivered, not what is drawn: not part of an item's id,
#: so re-running with ``response_format="url"`` instead of ``b64_json`` still resumes.
_DELIVERY_FIELDS = frozenset({"response_format", "user"})
_SLUG_MAX = 40
_TAG_LENGTH = 10
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, max_length: int = _SLUG_MAX) -> str:
    """A file-name-safe prefix of ``text``: ASCII ``[a-z0-9-]`` only, ``"image"`` if empty.

    Example:
        >>> slugify("Ünïcode ../../etc/passwd: a Fox!")
        'unicode-etc-passwd-a-fox'
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    slug = slug[:max_length].rstrip("-")
    return slug or "image"


def item_tag(item_id: str) -> str:
    """A short, file-name-safe fingerprint of an item id (10 hex digits of its SHA-256).

    Example:
        >>> item_tag("lighthouse-1")
        '33273621ed'
    """
    return hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:_TAG_LENGTH]


def image_file_name(
    index: int, prompt: str, item_id: str, image_number: int, extension: str
) -> str:
    """``{index:06d}-{slug}-{tag}-{k}{ext}``: sorted like the input, readable, one per item id.

    ``tag`` is `item_tag` of the item id, which changes with what the item asks for
    (prompt, model, size, seed...): a re-run asking for something else never lands on an
    earlier run's files. Should the name be taken anyway (a damaged file being regenerated, a
    file of the user's), the writer picks ``...-{k}-v2{ext}`` and so on; it never replaces one.
    """
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", extension):
        raise ValueError(f"unexpected image extension {extension!r}")
    return f"{index:06d}-{slugify(prompt)}-{item_tag(item_id)}-{image_number}{extension}"


def safe_path(folder: Path, name: str) -> Path:
    """``folder / name``, refusing anything that would resolve outside ``folder``.

    Names come from `image_file_name`, so this never fires; it is the belt to its braces.
    The name itself is not resolved: a symlink placed at it is a taken name (the writer never
    follows or replaces it), not a way out of the folder.
    """
    if name not in ("", ".", "..") and _NOT_IN_PLAIN_NAMES.isdisjoint(name):
        # A plain name lies directly in the folder, as the check below always finds, without
        # its two resolve() calls: a dozen system calls each, twice per saved file (W10).
        return folder / name
    root = folder.resolve()
    target = root / name
    if name == ".." or "\0" in name or target.name != name or target.parent.resolve() != root:
        raise ValueError(f"refusing to write {name!r} outside the output folder {str(root)!r}")
    return folder / name


def _data_url_digest(url: object) -> str:
    return "sha256:" + hashlib.sha256(str(url).encode("utf-8", "surrogatepass")).hexdigest()


def _data_url_placeholder(url: object, digest: str) -> str:
    text = str(url)
    mime = text[5 : text.find(";")] if text.startswith("data:") and ";" in text else "image"
    approx_bytes = max(0, len(text) - text.find(",") - 1) * 3 // 4
    return f"<{mime}, ~{approx_bytes} bytes, {digest[:23]}>"


def fingerprint_body(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(digest, public request)`` of a body, hashing each input image once.

    The digest is a stable hash of what the item asks for (prompt, effective parameters, input
    images by content); delivery-only fields (``response_format``, ``user``) do not count, so a
    re-run asking for URLs instead of base64 still resumes. The public request is the body as
    shown in results and the manifest, data URLs replaced by short placeholders. Input images
    can be megabytes each: call this in a worker thread when a body has any.
    """
    canonical: dict[str, Any] = {}
    shown = dict(body)
    for name, value in body.items():
        if name in IMAGE_BODY_FIELDS:
            urls = value if isinstance(value, list) else [value]
            digests = [_data_url_digest(url) for url in urls]
            placeholders = [
                _data_url_placeholder(url, digest)
                for url, digest in zip(urls, digests, strict=True)
            ]
            multiple = isinstance(value, list)
            canonical[name] = digests if multiple else digests[0]
            shown[name] = placeholders if multiple else placeholders[0]
        elif name not in _DELIVERY_FIELDS:
            canonical[name] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return digest, shown


def public_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as shown in results and the manifest: data URLs become short placeholders."""
    return fingerprint_body(body)[1]


def request_digest(body: Mapping[str, Any]) -> str:
    """A stable hash of what an item asks for; see `fingerprint_body`."""
    return fingerprint_body(body)[0]


class IdentityCounter:
    """Gives identical requests distinct, stable ids: ``{digest}-{occurrence}``.

    Counting occurrences exactly would mean remembering every distinct request: a dict entry
    (~120 bytes) per item, over a gigabyte for ten million prompts. Instead the digests met so
    far live in a scalable Bloom filter (a few bytes per item), and only digests the filter
    reports as met before get an exact counter. A false positive (below 1 in 100 overall) makes
    a first occurrence start at ``-1`` instead of ``-0``; ids stay unique (each digest's numbers
    only increase) and, for the same input in the same order, identical from run to run, since
    the filter's state depends on nothing but the digests before it.
    """

    #: Items the first filter layer holds; each further layer holds twice the one before.
    FIRST_CAPACITY = 1 << 13
    #: False-positive rate of the first layer; halved for each further layer, so the rates sum
    #: to at most twice this however many layers there are.
    FIRST_ERROR = 0.005

    def __init__(self) -> None:
        """Start with no request seen."""
        self._layers: list[tuple[bytearray, int, int]] = []  # (bits, bit count, hash count)
        self._capacity = 0
        self._in_layer = 0
        self._again: dict[int, int] = {}
        self._add_layer()

    def _add_layer(self) -> None:
        number = len(self._layers)
        capacity = self.FIRST_CAPACITY << number
        error = self.FIRST_ERROR / 2**number
        hashes = math.ceil(math.log2(1 / error))
        bits = math.ceil(capacity * hashes / math.log(2))
        self._layers.append((bytearray((bits + 7) // 8), bits, hashes))
        self._capacity = capacity
        self._in_layer = 0

    def _maybe_seen(self, first: int, step: int) -> bool:
        # Double hashing (Kirsch-Mitzenmacher): two 32-bit halves of the digest make k probes.
        # Plain loops with early exits: most probes of an unseen digest stop at the first bit.
        for layer, bits, hashes in self._layers:
            for i in range(hashes):
                p = (first + i * step) % bits
                if not layer[p >> 3] & (1 << (p & 7)):
                    break
            else:
                return True
        return False

    def _remember(self, first: int, step: int) -> None:
        if self._in_layer >= self._capacity:
            self._add_layer()
        layer, bits, hashes = self._layers[-1]
        for i in range(hashes):
            p = (first + i * step) % bits
            layer[p >> 3] |= 1 << (p & 7)
        self._in_layer += 1

    def next_id(self, digest: str) -> str:
        """The id of the next occurrence of ``digest`` (``-0`` for the first)."""
        key = int(digest, 16)
        first, step = key & 0xFFFFFFFF, (key >> 32) | 1
        if self._maybe_seen(first, step):
            occurrence = self._again.get(key, 1)
            self._again[key] = occurrence + 1
        else:
            occurrence = 0
            self._remember(first, step)
        return f"{digest}-{occurrence}"
