"""The contenders: each module has ``async def run(job: Job, probe: Probe) -> None``.

Every contender makes ``job.generations`` generation requests with at most ``job.concurrency``
in flight, and reads the bytes of every image (base64-decoded or downloaded), so the comparison
is between complete jobs, not between who skips work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from benchmarks._job import Job, Probe

Runner = Callable[[Job, Probe], Awaitable[None]]

FLOOR = "aiohttp"

#: Name shown in the table -> module implementing it.
CONTENDERS: dict[str, str] = {
    "nanogpt-async batch": "benchmarks.contenders.nanogpt_batch",
    "nanogpt-async generate": "benchmarks.contenders.nanogpt_generate",
    "openai": "benchmarks.contenders.openai_default",
    "openai aiohttp": "benchmarks.contenders.openai_aiohttp",
    "httpx": "benchmarks.contenders.plain_httpx",
    FLOOR: "benchmarks.contenders.plain_aiohttp",
    # W10, whole jobs in a child process each (files, fsync, manifest):
    "nanogpt-async CLI batch": "benchmarks.contenders.nanogpt_cli_batch",
    "aiohttp whole-job script": "benchmarks.contenders.whole_job_aiohttp",
}

__all__ = ["CONTENDERS", "FLOOR", "Runner"]
