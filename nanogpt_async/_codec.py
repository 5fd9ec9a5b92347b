"""JSON and base64 with the fast libraries when installed (the ``speed`` extra), stdlib otherwise.

orjson parses large bodies several times faster than ``json``; pybase64 decodes ~8x faster than
``base64`` and releases the GIL, which matters because big payloads are decoded in worker threads
while the event loop keeps serving other requests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import anyio.to_thread

__all__ = [
    "OFFLOAD_THRESHOLD",
    "JSONDecodeError",
    "b64decode",
    "b64decode_maybe_offloaded",
    "b64encode",
    "dumps",
    "dumps_maybe_offloaded",
    "loads",
    "loads_chunks_maybe_offloaded",
    "loads_generations",
]

#: Payloads larger than this are parsed/decoded in a worker thread, not on the event loop.
#: Below it the thread hop (~50 us) costs more than the work.
OFFLOAD_THRESHOLD = 256 * 1024

try:
    import orjson

    def loads(data: bytes | str) -> Any:
        """Parse JSON (orjson)."""
        return orjson.loads(data)

    def dumps(obj: Any) -> bytes:
        """Serialise JSON to compact UTF-8 bytes (orjson)."""
        return orjson.dumps(obj)

    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError

except ImportError:  # pragma: no cover - exercised when the speed extra is absent

    def loads(data: bytes | str) -> Any:
        """Parse JSON (stdlib)."""
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        """Serialise JSON to compact UTF-8 bytes (stdlib)."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    JSONDecodeError = json.JSONDecodeError

try:
    import pybase64

    def b64decode(data: str | bytes) -> bytes:
        """Decode strict base64 (pybase64); raises ``binascii.Error`` on bad input."""
        return pybase64.b64decode(data, validate=True)

    def b64encode(data: bytes) -> str:
        """Encode bytes as base64 text (pybase64)."""
        return pybase64.b64encode(data).decode("ascii")

except ImportError:  # pragma: no cover - exercised when the speed extra is absent

    def b64decode(data: str | bytes) -> bytes:
        """Decode strict base64 (stdlib); raises ``binascii.Error`` on bad input."""
        return base64.b64decode(data, validate=True)

    def b64encode(data: bytes) -> str:
        """Encode bytes as base64 text (stdlib)."""
        return base64.b64encode(data).decode("ascii")


_B64_KEY = b'"b64_json"'
_JSON_SPACE = b" \t\r\n"


def _b64_spans(data: bytes) -> list[tuple[int, int]] | None:
    """Where the ``"b64_json"`` string values are, or ``None`` if any looks unusual."""
    spans: list[tuple[int, int]] = []
    position = data.find(_B64_KEY)
    while position != -1:
        cursor = position + len(_B64_KEY)
        while data[cursor : cursor + 1] in _JSON_SPACE and cursor < len(data):
            cursor += 1
        if data[cursor : cursor + 1] != b":":
            return None
        cursor += 1
        while data[cursor : cursor + 1] in _JSON_SPACE and cursor < len(data):
            cursor += 1
        if data[cursor : cursor + 1] != b'"':
            return None
        end = data.find(b'"', cursor + 1)
        # base64 needs no escapes; a backslash means something else is going on.
        if end == -1 or data.find(b"\\", cursor + 1, end) != -1:
            return None
        spans.append((cursor + 1, end))
        position = data.find(_B64_KEY, end + 1)
    return spans


def loads_generations(data: bytes) -> Any:
    """Parse JSON whose bulk is ``b64_json`` strings, never holding the GIL for long.

    ``orjson.loads`` of a 16 MB answer (4 images of 3 MB) holds the GIL for ~27 ms even in a
    worker thread, stalling the event loop that long (stdlib ``json``: 22 ms). Here the
    base64 strings are cut out with ``bytes.find`` (memchr speed), the small remainder is
    parsed, and each string is put back with one ``bytes.decode("ascii")`` (~1 ms per 4 MB),
    so the GIL changes hands between pieces. Anything unexpected falls back to a plain parse.
    """
    spans = _b64_spans(data)
    if not spans:
        return loads(data)
    pieces: list[bytes] = []
    start = 0
    for begin, end in spans:
        pieces.append(data[start:begin])
        start = end
    pieces.append(data[start:])
    skeleton = loads(b"".join(pieces))
    items = skeleton.get("data") if isinstance(skeleton, dict) else None
    holes = (
        [item for item in items if isinstance(item, dict) and item.get("b64_json") == ""]
        if isinstance(items, list)
        else []
    )
    if len(holes) != len(spans):
        return loads(data)
    view = memoryview(data)
    try:
        for item, (begin, end) in zip(holes, spans, strict=True):
            item["b64_json"] = str(view[begin:end], "ascii")
    except UnicodeDecodeError:
        return loads(data)
    return skeleton


def _join_and_load(chunks: list[bytes]) -> Any:
    return loads_generations(b"".join(chunks))


async def loads_chunks_maybe_offloaded(chunks: list[bytes]) -> Any:
    """Parse a body received in chunks; join and parse in a worker thread when it is big."""
    if sum(map(len, chunks)) > OFFLOAD_THRESHOLD:
        return await anyio.to_thread.run_sync(_join_and_load, chunks)
    return loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def _text_size(body: Mapping[str, Any]) -> int:
    """Characters in the body's top-level strings (and lists of strings): where data URLs sit."""
    size = 0
    for value in body.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(item) for item in value if isinstance(item, str))
    return size


async def dumps_maybe_offloaded(body: Mapping[str, Any]) -> bytes:
    """Serialise a request body, in a worker thread when it carries megabytes (input images)."""
    if _text_size(body) > OFFLOAD_THRESHOLD:
        return await anyio.to_thread.run_sync(dumps, body)
    return dumps(body)


async def b64decode_maybe_offloaded(data: str) -> bytes:
    """Decode base64, in a worker thread when the payload is big enough to stall the event loop."""
    if len(data) > OFFLOAD_THRESHOLD:
        return await anyio.to_thread.run_sync(b64decode, data)
    return b64decode(data)
