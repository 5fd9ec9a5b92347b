"""nanogpt-async, one call per image: ``client.images.generate`` under gather + a semaphore.

The client's default transport (httpx over aiohttp's connector under asyncio), its pool sized to
the concurrency, its retry engine handling 429s (``max_retries`` raised so every image
completes), then ``image.read()`` for the bytes. An httpx response hook counts 429s.
"""

from __future__ import annotations

import aiohttp  # noqa: F401 - imported before the clock starts, as every contender's stack is
import httpx
import httpx_aiohttp  # noqa: F401 - (nanogpt_async imports them lazily, at the first request)

from benchmarks._job import MAX_ATTEMPTS, Job, Probe
from benchmarks.contenders._common import bounded
from nanogpt_async import AsyncNanoGPT, ImageURLExpiredError


def benchmark_client(job: Job, probe: Probe) -> AsyncNanoGPT:
    """The client both nanogpt-async contenders use: pool sized to the job, 429s counted.

    ``max_retries`` is raised so every image completes; an httpx response hook counts the 429s
    the client's retries would otherwise hide. The client's pacer runs at the workload's
    ``rps`` (``None``, unpaced, where the workload has no rate limit to respect).
    """
    client = AsyncNanoGPT(
        api_key=job.api_key,
        base_url=job.base_url,
        max_connections=job.concurrency,
        max_retries=MAX_ATTEMPTS - 1,
        rps=job.rps,
    )

    async def hook(response: httpx.Response) -> None:
        if response.status_code == 429:
            probe.got_429()

    http = client.channel.pools.api
    http.event_hooks = {"request": [], "response": [hook]}
    return client


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
