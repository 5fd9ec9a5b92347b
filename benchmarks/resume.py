"""Resume at scale (issue 12): a re-run over a folder with 1,000,000 items already recorded.

Builds (once, then reused) a synthetic output folder: ``--items`` small image files and a
manifest with one ``ok`` line per item, as the batch writes them (``--legacy`` leaves out the
per-file ``stamp`` that newer manifests carry, as a manifest written before it would). Then two
measured runs, each in a fresh child process (its own peak RSS):

- ``skip-all``: the same items again; every one is skipped after its files are checked.
  Bar: finished within 20 s, peak RSS within 300 MB.
- ``last-new``: the same items but the last ``--new`` replaced by new ones (run against the fake
  server, 0 s latency). Bar: the first new request goes out within 10 s.

The folder is built by this script directly (no fsync per file: building a million files
through the batch itself would take hours); the files are real, so a resume reads, stats or
hashes them for real. The page cache is warm (the files were just built or used): a cold-cache
re-run reads more from disk, which only matters where files are hashed.

Run: ``python -m benchmarks.resume --items 1000000`` (``--legacy`` for stamp-less manifests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KEY = "resume-key"
_FILES_PER_DIR_NAME = "manifest.jsonl"


def _item(i: int, *, new: bool = False) -> dict[str, str]:
    return {"id": f"new-{i:07d}" if new else f"item-{i:07d}", "prompt": f"resume prompt {i}"}


def _build(folder: Path, items: int, *, legacy: bool) -> None:
    marker = folder / f".built-{items}-{'legacy' if legacy else 'stamped'}"
    if marker.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(".built-*"):
        old.unlink()
    started = time.monotonic()
    with (folder / _FILES_PER_DIR_NAME).open("w", encoding="utf-8") as manifest:
        for i in range(items):
            item = _item(i)
            name = f"{item['id']}.png"
            data = f"synthetic image {i}\n".encode() * 4
            path = folder / name
            if not path.exists() or path.stat().st_size != len(data):
                path.write_bytes(data)
            entry: dict[str, Any] = {
                "path": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
            if not legacy:
                info = path.lstat()
                entry["stamp"] = [info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
            record = {
                "id": item["id"],
                "index": i,
                "prompt": item["prompt"],
                "params": {"model": "hidream", "size": "1024x1024"},
                "status": "ok",
                "files": [entry],
                "cost": 0.01,
                "attempts": 1,
                "error": None,
                "request_id": f"req-{i}",
                "started_at": 1.0,
                "finished_at": 2.0,
            }
            manifest.write(json.dumps(record, separators=(",", ":")) + "\n")
    marker.touch()
    print(f"built {items} items in {time.monotonic() - started:.1f} s", file=sys.stderr)


def _inputs(items: int, new: int) -> Iterator[dict[str, str]]:
    for i in range(items):
        yield _item(i, new=i >= items - new)


async def _run(folder: Path, items: int, new: int, base_url: str) -> dict[str, Any]:
    import httpx

    from nanogpt_async import AsyncNanoGPT

    first_request: list[float] = []

    async def on_request(_: httpx.Request) -> None:
        if not first_request:
            first_request.append(time.monotonic())

    started = time.monotonic()
    async with AsyncNanoGPT(api_key=KEY, base_url=base_url) as client:
        client.channel.pools.api.event_hooks = {"request": [on_request]}
        summary = await client.images.generate_many(
            _inputs(items, new), output_dir=folder, rps=None
        ).run()
    elapsed = time.monotonic() - started
    return {
        "items": items,
        "new": new,
        "skipped": summary.skipped,
        "ok": summary.ok,
        "failed": summary.failed,
        "elapsed_s": round(elapsed, 2),
        "first_request_s": round(first_request[0] - started, 2) if first_request else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_s": round(time.process_time(), 2),
    }


def _child(args: argparse.Namespace) -> None:
    result = asyncio.run(_run(args.folder, args.items, args.new, args.base_url))
    print(json.dumps(result))


def _measure(folder: Path, items: int, new: int, base_url: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.resume", "--child", "--folder", str(folder)]
    argv += ["--items", str(items), "--new", str(new), "--base-url", base_url]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _restore(folder: Path, items: int, new: int) -> None:
    """Take the lines and files a ``last-new`` run added out again, so runs repeat."""
    manifest = folder / _FILES_PER_DIR_NAME
    with manifest.open("rb+") as file:
        file.seek(0, os.SEEK_END)
        end = file.tell()
        file.seek(max(0, end - 200_000))
        tail = file.read()
        keep = len(tail)
        for line in reversed(tail.splitlines(keepends=True)):
            if b'"new-' not in line:
                break
            keep -= len(line)
        file.truncate(end - len(tail) + keep)
    for i in range(items - new, items):
        for path in folder.glob(f"{_item(i, new=True)['id']}*"):
            path.unlink()


def main() -> None:
    """Build the folder if needed, then run both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/nanogpt-resume-bench"))  # noqa: S108
    parser.add_argument("--legacy", action="store_true", help="manifest lines without stamps")
    parser.add_argument("--only", choices=["skip-all", "last-new"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default="http://127.0.0.1:9/api/v1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from nanogpt_async.testing import start_process

    folder = args.folder / ("legacy" if args.legacy else "stamped")
    _build(folder, args.items, legacy=args.legacy)
    results: dict[str, Any] = {"load_avg_before": os.getloadavg()}
    if args.only in (None, "skip-all"):
        results["skip_all"] = _measure(folder, args.items, 0, args.base_url)
    if args.only in (None, "last-new"):
        with start_process(latency=0, port=0, api_key=KEY, balance=1e9) as base_url:
            results["last_new"] = _measure(folder, args.items, args.new, base_url)
        _restore(folder, args.items, args.new)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
