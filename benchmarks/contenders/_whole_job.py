"""W10's contenders run a whole job as a user would: a separate process writing files.

Both write a prompt file into a fresh temp folder, run the job as a child process (its CPU is
counted: the worker measures its children's CPU too), then count what the manifest records,
checking each file's size against it (the bytes were written and fsynced by the child).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks._job import Job, Probe


async def run_child(job: Job, probe: Probe, argv: Sequence[str], out_name: str = "out") -> None:
    """Run ``argv`` (``{prompts}``/``{out}`` filled in) and count the manifest's images."""
    with tempfile.TemporaryDirectory(prefix="nanogpt-w10-") as temp:
        prompts = Path(temp) / "prompts.txt"
        prompts.write_text("".join(f"{job.prompt(i)}\n" for i in range(job.generations)))
        out = Path(temp) / out_name
        filled = [part.format(prompts=prompts, out=out) for part in argv]
        env = {**os.environ, "NANOGPT_API_KEY": job.api_key, "NANOGPT_BASE_URL": job.base_url}
        process = await asyncio.create_subprocess_exec(
            sys.executable, *filled, env=env, stdout=asyncio.subprocess.DEVNULL
        )
        if await process.wait() != 0:
            probe.failed(f"exit status {process.returncode}")
        for line in (out / "manifest.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("status") != "ok":
                probe.failed(record.get("error"))
                continue
            probe.generated()
            for entry in record["files"]:
                size = (out / entry["path"]).stat().st_size
                if size != entry["bytes"]:
                    probe.failed(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']}")
                probe.images += 1
                probe.image_bytes += size
