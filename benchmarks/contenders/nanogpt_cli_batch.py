"""The CLI: ``nanogpt-async batch prompts.txt -o out -c 256`` (unpaced), as a child process."""

from __future__ import annotations

from benchmarks._job import Job, Probe
from benchmarks.contenders._whole_job import run_child


async def run(job: Job, probe: Probe) -> None:
    # --rps high enough never to bind (W10 has no rate limit); no progress lines.
    argv = ["-m", "nanogpt_async", "batch", "{prompts}", "-o", "{out}"]
    argv += ["-c", str(job.concurrency), "--rps", "1000000", "--progress", "none"]
    argv += ["--no-gallery"]  # the script writes no gallery page either
    await run_child(job, probe, argv)
