"""Plain ``httpx.AsyncClient`` (its own connection pool, limits matched) + a semaphore.

Same naive 429 handling and codecs as the aiohttp floor.
"""

from __future__ import annotations

import asyncio

import httpx

from benchmarks._job import MAX_ATTEMPTS, Job, Probe
from benchmarks.contenders._common import b64decode, body, bounded, dumps, loads, retry_after


async def run(job: Job, probe: Probe) -> None:
    limits = httpx.Limits(
        max_connections=job.concurrency, max_keepalive_connections=job.concurrency
    )
    timeout = httpx.Timeout(300, connect=10, pool=None)
    headers = {"Authorization": f"Bearer {job.api_key}", "Content-Type": "application/json"}
    url = f"{job.base_url}/images/generations"
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(index: int) -> None:
            content = dumps(body(job, index))
            for _ in range(MAX_ATTEMPTS):
                response = await client.post(url, content=content, headers=headers)
                if response.status_code == 429:
                    probe.got_429()
                    await asyncio.sleep(retry_after(response.headers.get("Retry-After")))
                    continue
                if response.status_code != 200:
                    probe.failed(f"HTTP {response.status_code}: {response.content[:200]!r}")
                    return
                break
            else:
                probe.failed("gave up after repeated 429s")
                return
            since = probe.generated()
            for item in loads(response.content)["data"]:
                if "b64_json" in item:
                    probe.image(b64decode(item["b64_json"]))
                    continue
                download = await client.get(item["url"])
                if download.status_code in (403, 404):
                    probe.url_expired()
                elif download.status_code != 200:
                    probe.failed(f"download HTTP {download.status_code}")
                else:
                    probe.downloaded(since, download.content)

        await bounded(job, one)
