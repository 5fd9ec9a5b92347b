"""The ``openai`` SDK with its aiohttp option (``http_client=DefaultAioHttpClient()``)."""

from __future__ import annotations

from benchmarks._job import Job, Probe
from benchmarks.contenders._openai import run_openai


async def run(job: Job, probe: Probe) -> None:
    await run_openai(job, probe, use_aiohttp=True)
