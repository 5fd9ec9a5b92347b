"""The official ``openai`` SDK: ``AsyncOpenAI(base_url=...).images.generate`` + a semaphore.

The SDK's own retries handle 429s (it honours ``Retry-After``); ``max_retries`` is raised so every
image completes, and an httpx response hook counts the 429s. The SDK's HTTP client (httpx2, with
its own pool or with the aiohttp transport) gets connection limits matched to the concurrency
(the SDK default keeps only 100 idle connections) and also fetches URLs, as a user would.
"""

from __future__ import annotations

import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient

from benchmarks._job import MAX_ATTEMPTS, Job, Probe
from benchmarks.contenders._common import b64decode, bounded


async def run_openai(job: Job, probe: Probe, *, use_aiohttp: bool) -> None:
    async def count_429(response: httpx2.Response) -> None:
        if response.status_code == 429:
            probe.got_429()

    limits = httpx2.Limits(
        max_connections=job.concurrency, max_keepalive_connections=job.concurrency
    )
    factory = DefaultAioHttpClient if use_aiohttp else DefaultAsyncHttpxClient
    http_client = factory(limits=limits, event_hooks={"response": [count_429]})
    async with (
        http_client,
        AsyncOpenAI(
            base_url=job.base_url,
            api_key=job.api_key,
            http_client=http_client,
            max_retries=MAX_ATTEMPTS - 1,
        ) as client,
    ):

        async def one(index: int) -> None:
            response = await client.images.generate(
                prompt=job.prompt(index), n=job.n, response_format=job.response_format
            )
            since = probe.generated()
            for image in response.data or []:
                if image.b64_json is not None:
                    probe.image(b64decode(image.b64_json))
                    continue
                if image.url is None:
                    probe.failed("an image with neither b64_json nor url")
                    continue
                download = await http_client.get(image.url)
                if download.status_code in (403, 404):
                    probe.url_expired()
                elif download.status_code != 200:
                    probe.failed(f"download HTTP {download.status_code}")
                else:
                    probe.downloaded(since, download.content)

        await bounded(job, one)
