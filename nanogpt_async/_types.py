"""Small shared types: the "not given" sentinel and type aliases used across the package."""

from __future__ import annotations

import enum
import os
from typing import Final, Literal

import httpx

__all__ = [
    "NOT_GIVEN",
    "ImageInput",
    "NotGiven",
    "ResponseFormat",
    "TimeoutTypes",
]


class NotGiven(enum.Enum):
    """Marks an argument the caller did not pass.

    Distinct from ``None`` so that ``timeout=None`` can mean "no timeout" while an omitted
    ``timeout`` means "use the client's setting".
    """

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN

#: A per-request timeout: seconds, an ``httpx.Timeout``, or ``None`` for no timeout at all.
TimeoutTypes = float | httpx.Timeout | None

#: What the server sends back for each image.
ResponseFormat = Literal["b64_json", "url"]

#: An input image: a file path, raw bytes, or a ``data:image/...;base64,`` URL.
ImageInput = str | os.PathLike[str] | bytes
