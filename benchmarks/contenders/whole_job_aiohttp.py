"""The hand-written yardstick: ``benchmarks/whole_job_script.py``, as a child process."""

from __future__ import annotations

from pathlib import Path

from benchmarks._job import Job, Probe
from benchmarks.contenders._whole_job import run_child

SCRIPT = Path(__file__).resolve().parent.parent / "whole_job_script.py"


async def run(job: Job, probe: Probe) -> None:
    argv = [str(SCRIPT), "{prompts}", "{out}", "--base-url", job.base_url]
    argv += ["--concurrency", str(job.concurrency)]
    await run_child(job, probe, argv)
