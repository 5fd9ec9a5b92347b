"""The floor: plain ``aiohttp`` + a semaphore, orjson/pybase64 inline, 429s retried naively.

Naive retry: on a 429 sleep ``Retry-After`` while keeping the semaphore slot, then send again
(at most `MAX_ATTEMPTS` times). No pacing, no jitter: what a quick script does.
"""

from __future__ import annotations

import asyncio

import aiohttp

from benchmarks._job import MAX_ATTEMPTS, Job, Probe
from benchmarks.contenders._common import b64decode, body, bounded, dumps, loads, retry_after


async def run(job: Job, probe: Probe) -> None:
    connector = aiohttp.TCPConnector(limit=job.concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=300, connect=10)
    headers = {"Authorization": f"Bearer {job.api_key}", "Content-Type": "application/json"}
    url = f"{job.base_url}/images/generations"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int) -> None:
            content = dumps(body(job, index))
            for _ in range(MAX_ATTEMPTS):
                async with session.post(url, data=content, headers=headers) as response:
                    raw = await response.read()
                    status = response.status
                    wait = retry_after(response.headers.get("Retry-After"))
                if status == 429:
                    probe.got_429()
                    await asyncio.sleep(wait)
                    continue
                if status != 200:
                    probe.failed(f"HTTP {status}: {raw[:200]!r}")
                    return
                break
            else:
                probe.failed("gave up after repeated 429s")
                return
            since = probe.generated()
            for item in loads(raw)["data"]:
                if "b64_json" in item:
                    probe.image(b64decode(item["b64_json"]))
                    continue
                async with session.get(item["url"]) as download:
                    data = await download.read()
                    if download.status in (403, 404):
                        probe.url_expired()
                    elif download.status != 200:
                        probe.failed(f"download HTTP {download.status}")
                    else:
                        probe.downloaded(since, data)

        await bounded(job, one)
