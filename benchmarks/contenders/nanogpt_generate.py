"""nanogpt-async, one call per image: ``client.images.generate`` under gather + a semaphore.

The client's default transport (httpx over aiohttp's connector under asyncio), its pool sized to
the concurrency, its retry engine handling 429s (``max_retries`` raised so every image
completes), then ``image.read()`` for the bytes. 429s are counted where the channel checks statuses.
"""

from __future__ import annotations

from typing import Any

import aiohttp  # noqa: F401 - imported before the clock starts, as every contender's stack is
import httpx_aiohttp  # noqa: F401 - (nanogpt_async imports them lazily, at the first request)

from benchmarks._job import MAX_ATTEMPTS, Job, Probe
from benchmarks.contenders._common import bounded
from nanogpt_async import AsyncNanoGPT, ImageURLExpiredError
from nanogpt_async._http._channel import Channel


def benchmark_client(job: Job, probe: Probe) -> AsyncNanoGPT:
    """The client both nanogpt-async contenders use: pool sized to the job, 429s counted.

    ``max_retries`` is raised so every image completes. The 429s the client's retries would
    otherwise hide are counted where the channel checks every answer's status
    (`_count_429s`): not with an httpx event hook, because a pool with hooks sends through
    httpx's client layers instead of below them, which is not the path users get. The client's
    pacer runs at the workload's ``rps`` (``None``, unpaced, where the workload has no rate
    limit to respect).
    """
    _count_429s(probe)
    return AsyncNanoGPT(
        api_key=job.api_key,
        base_url=job.base_url,
        max_connections=job.concurrency,
        max_retries=MAX_ATTEMPTS - 1,
        rps=job.rps,
    )


def _count_429s(probe: Probe) -> None:
    """Count every 429 answer in ``probe`` (one worker process runs one job: patched once)."""
    check = Channel._check_status  # noqa: SLF001 - the benchmark's probe, not the library's API

    def counting(response: Any, chunks: list[bytes], request_id: str | None) -> None:
        if response.status_code == 429:
            probe.got_429()
        check(response, chunks, request_id)

    Channel._check_status = staticmethod(counting)  # type: ignore[method-assign]  # noqa: SLF001


async def run(job: Job, probe: Probe) -> None:
    async with benchmark_client(job, probe) as client:

        async def one(index: int) -> None:
            response = await client.images.generate(
                prompt=job.prompt(index), n=job.n, response_format=job.response_format
            )
            since = probe.generated()
            for image in response.data:
                try:
                    data = await image.read()
                except ImageURLExpiredError:
                    probe.url_expired()
                    continue
                if image.url is not None:
                    probe.downloaded(since, data)
                else:
                    probe.image(data)

        await bounded(job, one)
