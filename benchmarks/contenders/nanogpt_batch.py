"""nanogpt-async's batch runner: ``client.images.generate_many(..., output_dir=None)``.

Concurrency matched to the others; the batch takes its turns from the client's pacer, at the
workload's ``rps`` (``None``, i.e. unpaced, except in W3 and W7 where pacing at 25 req/s is the
point); other settings are the defaults (downloads and
decodes at most 32 at once, burst 1). Images stay in memory (``ItemResult.images``) and are
dropped as soon as they are counted, as with every contender. The generation-to-download delay
is the runner's own ``ItemResult.download_delay`` (answer received to bytes in hand).
"""

from __future__ import annotations

import aiohttp  # noqa: F401 - imported before the clock starts, as every contender's stack is
import httpx_aiohttp  # noqa: F401 - (nanogpt_async imports them lazily, at the first request)

# generate_many loads the runner lazily; load it before the clock starts, as every stack is.
import nanogpt_async._batch._runner  # noqa: F401
from benchmarks._job import Job, Probe
from benchmarks.contenders.nanogpt_generate import benchmark_client
from nanogpt_async import ImageURLExpiredError


async def run(job: Job, probe: Probe) -> None:
    async with benchmark_client(job, probe) as client:
        batch = client.images.generate_many(
            (job.prompt(i) for i in range(job.generations)),
            output_dir=None,
            concurrency=job.concurrency,
            total=job.generations,
            n=job.n,
            response_format=job.response_format,
        )
        async with batch:
            async for result in batch:
                probe.generated()
                for data in result.images:
                    if job.response_format == "url" and result.download_delay is not None:
                        probe.gen_to_download.append(result.download_delay)
                    probe.image(data)
                if isinstance(result.error, ImageURLExpiredError):
                    probe.url_expired()
                elif result.error is not None:
                    probe.failed(result.error)
