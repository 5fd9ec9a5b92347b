"""A careful hand-written aiohttp script doing a batch's whole job (W10's yardstick).

For every prompt of a text file (one per line): one generation request (at most
``--concurrency`` in flight), the JSON parsed and the image base64-decoded, the file written to a
temp file, fsynced and renamed into place, and one manifest line appended (with the file's size
and SHA-256) and flushed, in that order, so a crash never records a file that is not complete.
The CPU and file work of an item is one worker-thread call; the event loop only does HTTP.
No retries, no pacing, no resume: what a competent one-off script does.

Run: ``NANOGPT_API_KEY=... python benchmarks/whole_job_script.py prompts.txt out/ --base-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pybase64


class Saver:
    """Writes an item's file atomically, then its manifest line (blocking: worker threads)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.manifest = os.open(out / "manifest.jsonl", flags, 0o644)
        self.lock = threading.Lock()

    def save(self, index: int, prompt: str, raw: bytes) -> int:
        """Decode, write, fsync, rename, then append the manifest line; images saved."""
        files = []
        for number, item in enumerate(orjson.loads(raw)["data"]):
            data = pybase64.b64decode(item["b64_json"], validate=True)
            name = f"{index:06d}-{number}.png"
            final = self.out / name
            temp = self.out / f".{name}.tmp"
            with temp.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            temp.rename(final)
            digest = hashlib.sha256(data).hexdigest()
            files.append({"path": name, "sha256": digest, "bytes": len(data)})
        line = json.dumps({"index": index, "prompt": prompt, "status": "ok", "files": files})
        with self.lock:  # one whole line per write; O_APPEND keeps lines apart
            os.write(self.manifest, line.encode() + b"\n")
        return len(files)

    def close(self) -> None:
        os.fsync(self.manifest)
        os.close(self.manifest)


async def main(args: argparse.Namespace, prompts: list[str], saver: Saver) -> int:
    key = os.environ["NANOGPT_API_KEY"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{args.base_url}/images/generations"
    semaphore = asyncio.Semaphore(args.concurrency)
    failed = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=300, connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int, prompt: str) -> None:
            nonlocal failed
            body: dict[str, Any] = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
            async with semaphore:
                async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                    raw = await response.read()
                    status = response.status
                if status != 200:
                    failed += 1
                    return
                await asyncio.to_thread(saver.save, index, prompt, raw)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    saver.close()
    if failed:
        sys.stderr.write(f"{failed} requests failed\n")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts")
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    arguments = parser.parse_args()
    lines = [p for p in Path(arguments.prompts).read_text().splitlines() if p.strip()]
    arguments.out.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(arguments, lines, Saver(arguments.out))))
