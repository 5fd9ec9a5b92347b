"""Helpers shared by the hand-written contenders: the same JSON/base64 code and 429 handling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._job import Job

try:  # The same fast codecs the library uses, so plain contenders are not handicapped.
    import orjson

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

    def dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover
    import json

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    def dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


try:
    import pybase64

    def b64decode(data: str) -> bytes:
        return pybase64.b64decode(data, validate=True)

except ImportError:  # pragma: no cover
    import base64

    def b64decode(data: str) -> bytes:
        return base64.b64decode(data, validate=True)


def retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (the fake sends whole seconds), 1 s if absent."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def body(job: Job, index: int) -> dict[str, object]:
    return {"prompt": job.prompt(index), "n": job.n, "response_format": job.response_format}


async def bounded(job: Job, one: Callable[[int], Awaitable[None]]) -> None:
    """Run ``one(i)`` for every generation, at most ``job.concurrency`` at a time."""
    semaphore = asyncio.Semaphore(job.concurrency)

    async def guarded(index: int) -> None:
        async with semaphore:
            await one(index)

    await asyncio.gather(*(guarded(i) for i in range(job.generations)))
