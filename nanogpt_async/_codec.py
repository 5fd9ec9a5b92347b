"""JSON and base64 with the fast libraries when installed (the ``speed`` extra), stdlib otherwise.

orjson parses large bodies several times faster than ``json``; pybase64 decodes ~8x faster than
``base64`` and releases the GIL, which matters because big payloads are decoded in worker threads
while the event loop keeps serving other requests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Generator, Mapping
from typing import Any

import anyio.lowlevel
import anyio.to_thread

__all__ = [
    "OFFLOAD_THRESHOLD",
    "JSONDecodeError",
    "b64decode",
    "b64encode",
    "dumps",
    "dumps_maybe_offloaded",
    "loads",
    "loads_chunks_maybe_offloaded",
    "loads_generations",
]

#: Payloads larger than this are decoded (and answers joined) in a worker thread, answers
#: parsed in steps: see `loads_chunks_maybe_offloaded`. Below it the thread hop (~50 us) and
#: the steps cost more than the work.
OFFLOAD_THRESHOLD = 256 * 1024

#: ``bytes.join`` copies without holding the GIL from this size on (CPython's
#: ``Objects/stringlib/join.h``, ``GIL_THRESHOLD``): only then is a worker thread worth it.
_JOIN_WITHOUT_GIL = 1024 * 1024

#: orjson turns integers outside [-2**63, 2**64) into floats; the stdlib keeps them exact. A
#: float this large in orjson's result may be such an integer, so the stdlib parses again.
_INEXACT_FLOAT = float(2**63)


def _has_big_float(value: object) -> bool:
    """Whether ``value`` holds a float of magnitude >= 2**63 (walks nodes, not bytes)."""
    pending: list[Any] = [value]
    while pending:
        node = pending.pop()
        # Exact types (what a parser returns), not isinstance: a resume parses a million
        # prompt lines (0.7 -> 0.3 µs a small object).
        kind = type(node)
        if kind is dict:
            pending.extend(node.values())
        elif kind is list:
            pending.extend(node)
        elif kind is float and abs(node) >= _INEXACT_FLOAT:
            return True
    return False


def _stdlib_loads(data: bytes | str) -> Any:
    """``json.loads``, with nesting too deep for the stack reported as invalid JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to parse") from None


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


try:
    import orjson

    def loads(data: bytes | str) -> Any:
        """Parse JSON (orjson), giving exactly what ``json.loads`` gives.

        Where orjson differs (integers beyond 64 bits become floats; numbers overflowing a
        double, ``NaN`` and ``Infinity`` are refused) the stdlib parses instead: a 400-digit
        ``cost`` must not throw away a paid answer.
        """
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _stdlib_loads(data)
        if _has_big_float(value):
            return _stdlib_loads(data)
        return value

    def dumps(obj: Any) -> bytes:
        """Serialise JSON to compact UTF-8 bytes (orjson; the stdlib for what orjson refuses).

        orjson refuses integers beyond 64 bits (a ``seed``, an ``extra_body`` field) that the
        stdlib writes exactly; anything neither can write is a ``TypeError``/``ValueError``.
        """
        try:
            return orjson.dumps(obj)
        except orjson.JSONEncodeError:
            return _stdlib_dumps(obj)

    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError

except ImportError:  # pragma: no cover - exercised when the speed extra is absent

    def loads(data: bytes | str) -> Any:
        """Parse JSON (stdlib)."""
        return _stdlib_loads(data)

    def dumps(obj: Any) -> bytes:
        """Serialise JSON to compact UTF-8 bytes (stdlib)."""
        return _stdlib_dumps(obj)

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
#: The placeholder for a cut-out base64 string (JSON escapes: a NUL no real answer carries).
_HOLE = b"\\u0000nanogpt-hole:"
_HOLE_TEXT = "\x00nanogpt-hole:"
_NUL = b"\\u0000"
_JSON_SPACE = b" \t\r\n"


_BACKSLASH = ord("\\")


def _escaped(data: bytes, position: int) -> bool:
    """Whether the quote at ``position`` is escaped (an odd run of backslashes before it)."""
    run = 0
    while position - run - 1 >= 0 and data[position - run - 1] == _BACKSLASH:
        run += 1
    return run % 2 == 1


def _b64_spans(data: bytes) -> Generator[None, None, list[tuple[int, int]] | None]:
    """Where the ``"b64_json"`` string values are, or ``None`` if any looks unusual.

    A step per string (two ``bytes.find`` over it, ~0.3 ms per 4 MB): see `_generation_steps`.
    """
    spans: list[tuple[int, int]] = []
    position = data.find(_B64_KEY)
    while position != -1:
        if _escaped(data, position):
            return None
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
        yield
        position = data.find(_B64_KEY, end + 1)
    return spans


#: What `_generation_steps` returns when only a plain parse of the whole body will do.
_WHOLE = object()


def _generation_steps(data: bytes) -> Generator[None, None, Any]:
    """`loads_generations`'s work in steps of a millisecond or two; returns the answer or `_WHOLE`.

    Every step holds the GIL (``bytes.find``, ``str`` from bytes, a small parse): in a worker
    thread they stall the event loop anyway, and for longer, since the loop then waits up to the
    interpreter's switch interval (5 ms) for the GIL each time it comes back from a system call
    (benchmark W4, a 16 MB answer: 8 ms of such work per answer in a worker thread, and every
    tick of the lag probe later than 10 ms fell during one). `loads_chunks_maybe_offloaded`
    runs them on the event loop instead, letting other tasks run between steps.
    """
    spans = yield from _b64_spans(data)
    if not spans:
        return _WHOLE
    # Each cut-out string is replaced by a numbered placeholder, so every one is found again
    # exactly where it was: an empty-string marker could be confused with a genuinely empty
    # value, or with a duplicate key written with a ``\u`` escape (``"b64\u005fjson"``).
    pieces: list[bytes] = []
    start = 0
    for number, (begin, end) in enumerate(spans):
        pieces.append(data[start:begin])
        pieces.append(b"%s%d" % (_HOLE, number))
        start = end
    pieces.append(data[start:])
    if any(_NUL in piece for piece in pieces[::2]):
        # The answer writes a NUL of its own: no placeholder is safe. Searched outside the
        # base64 strings only (which hold no backslash): over 16 MB this search costs 10 ms.
        return _WHOLE
    skeleton = loads(b"".join(pieces))
    items = skeleton.get("data") if isinstance(skeleton, dict) else None
    holes: dict[int, dict[str, Any]] = {}
    for item in items if isinstance(items, list) else []:
        value = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(value, str) and value.startswith(_HOLE_TEXT):
            number_text = value[len(_HOLE_TEXT) :]
            if not number_text.isdigit() or int(number_text) in holes:
                return _WHOLE
            holes[int(number_text)] = item
    if sorted(holes) != list(range(len(spans))):
        return _WHOLE
    view = memoryview(data)
    for number, (begin, end) in enumerate(spans):
        yield
        try:
            holes[number]["b64_json"] = _text(view[begin:end])
        except UnicodeDecodeError:
            return _WHOLE
    return skeleton


def _text(ascii_bytes: memoryview) -> str:
    """One base64 string as ``str``: a copy, ~0.4 ms per 4 MB, ~2 ms into fresh memory."""
    return str(ascii_bytes, "ascii")


def loads_generations(data: bytes) -> Any:
    """Parse JSON whose bulk is ``b64_json`` strings, never holding the GIL for long.

    ``orjson.loads`` of a 16 MB answer (4 images of 3 MB) holds the GIL for ~27 ms even in a
    worker thread, stalling the event loop that long (stdlib ``json``: 22 ms). Here the
    base64 strings are cut out with ``bytes.find`` (memchr speed), the small remainder is
    parsed, and each string is put back with one ``bytes.decode("ascii")`` (~1 ms per 4 MB),
    so the GIL changes hands between pieces. Anything unexpected falls back to a plain parse.
    """
    steps = _generation_steps(data)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result = done.value
    return loads(data) if result is _WHOLE else result


async def loads_chunks_maybe_offloaded(chunks: list[bytes]) -> Any:
    """Parse a body received in chunks; a big one in steps that keep the event loop responsive.

    A body of 1 MiB or more is joined in a worker thread (``bytes.join`` copies without the GIL
    from there; 16 MB of fresh memory costs ~7 ms of page faults here), then parsed on the event
    loop in `_generation_steps` (each step a millisecond or two, other tasks run between them),
    not in a worker thread: work that holds the GIL stalls the loop less where the loop can
    schedule it. Only an unusual answer, which needs a plain parse of all of it, goes back to
    a worker thread. The steps never check for cancellation: an answer received in full is
    paid for, and is parsed to its end (within milliseconds) before a cancellation lands.
    """
    size = sum(map(len, chunks))
    if size <= OFFLOAD_THRESHOLD:
        return loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    if len(chunks) == 1:
        data = chunks[0]
    elif size < _JOIN_WITHOUT_GIL:
        data = b"".join(chunks)  # under a millisecond, and a worker thread would hold the GIL
    else:
        data = await anyio.to_thread.run_sync(_join, chunks)
    steps = _generation_steps(data)
    try:
        while True:
            next(steps)
            await anyio.lowlevel.cancel_shielded_checkpoint()
    except StopIteration as done:
        result = done.value
    if result is _WHOLE:
        return await anyio.to_thread.run_sync(loads, data)
    return result


def _join(chunks: list[bytes]) -> bytes:
    return b"".join(chunks)


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
    """Serialise a request body, in a worker thread when it carries megabytes (input images).

    Raises:
        TypeError, ValueError, RecursionError: a value JSON cannot carry (an object in
            ``extra_body``...); the caller says what to do (see `_http._channel`).
    """
    if _text_size(body) > OFFLOAD_THRESHOLD:
        return await anyio.to_thread.run_sync(dumps, body)
    return dumps(body)
