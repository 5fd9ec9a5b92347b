"""Resume at scale (issue 12): a re-run over a folder with 1,000,000 items already recorded.

Builds (once, then reused) a synthetic output folder: ``--items`` small image files and a
manifest with one ``ok`` line per item, as the batch writes them (``--legacy`` leaves out the
per-file ``stamp`` that newer manifests carry, as a manifest written before it would). Then two
measured runs, each in a fresh child process (its own peak RSS):

- ``skip-all``: the same items again; every one is skipped after its files are checked.
  Bar: finished within 20 s, peak RSS within 300 MB.
- ``last-new``: the same items but the last ``--new`` replaced by new ones (run against the fake
  server, 0 s latency). Bar: the first new request goes out within 10 s.
- ``cpu_s`` is the run's own CPU; ``check_cpu_s`` that of the process checking the recorded files
  beside it (a big manifest's, see `nanogpt_async._batch._filecheck`). The CLI cases' ``cpu_s``
  counts both.
- ``cli-skip-all`` and ``cli-last-new``: the same two through the command line, the way a user
  re-runs a batch: ``nanogpt-async batch prompts.jsonl -o FOLDER --progress none --no-gallery``
  on a JSONL prompt file of ``--items`` lines (``{"id": ..., "prompt": ...}``, built once).
  Timed from the process's spawn (interpreter start-up included) to its exit; the first
  request is seen by the fake (run in this process, its request counter polled every 5 ms).

Every case checks that it skipped exactly what was recorded (a damaged folder would quietly
measure something else: requests sent, items regenerated) and exits non-zero if not.

The folder is built by this script directly (no fsync per file: building a million files
through the batch itself would take hours); the files are real, so a resume reads, stats or
hashes them for real. The page cache is warm (the files were just built or used): a cold-cache
re-run reads more from disk, which only matters where files are hashed.

Run: ``python -m benchmarks.resume --items 1000000`` (``--legacy`` for stamp-less manifests,
``--only CASE`` for one case, ``--rounds N`` to repeat each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
        # The manifest's file check runs in a process of its own (a big manifest's): its CPU.
        "check_cpu_s": round(_children_cpu(), 2),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child(args: argparse.Namespace) -> None:
    result = asyncio.run(_run(args.folder, args.items, args.new, args.base_url))
    print(json.dumps(result))


def _measure(folder: Path, items: int, new: int, base_url: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.resume", "--child", "--folder", str(folder)]
    argv += ["--items", str(items), "--new", str(new), "--base-url", base_url]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_avg"] = os.getloadavg()
    _check(result, items, new)
    return result


def _check(result: dict[str, Any], items: int, new: int) -> None:
    """Refuse a measurement that did not skip exactly the recorded items and run the new ones."""
    if result["skipped"] != items - new or result["ok"] != new or result["failed"]:
        print(json.dumps(result, indent=2))
        sys.exit(
            f"expected {items - new} skipped and {new} ok, got {result['skipped']} skipped, "
            f"{result['ok']} ok, {result['failed']} failed: the folder is damaged or was "
            "changed; delete it to have it built again"
        )


def _prompt_file(folder: Path, items: int, new: int) -> Path:
    """The CLI's input: one JSONL line per item, the last ``new`` of them new (built once)."""
    path = folder.parent / f"prompts-{items}-{new}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as file:
            for item in _inputs(items, new):
                file.write(json.dumps(item, separators=(",", ":")) + "\n")
        partial.rename(path)
    return path


def _summary_counts(stdout: str) -> dict[str, int]:
    """``ok``, ``failed`` and ``skipped`` from the CLI's plain summary lines."""
    labels = {"ok": "ok", "failed": "failed", "skipped (done before)": "skipped"}
    counts = {}
    for line in stdout.splitlines():
        label, _, value = line.strip().rpartition("  ")
        if label.strip() in labels:
            counts[labels[label.strip()]] = int(value)
    return counts


def _measure_cli(folder: Path, items: int, new: int) -> dict[str, Any]:
    """One CLI re-run in a child process: wall time, its CPU and peak RSS, the first request."""
    from nanogpt_async.testing import FakeNanoGPT

    prompts = _prompt_file(folder, items, new)
    fake = FakeNanoGPT(api_key=KEY, latency=0, balance=1e9)
    with fake.run_in_thread() as server:
        argv = [sys.executable, "-m", "nanogpt_async", "batch", str(prompts), "-o", str(folder)]
        argv += ["--progress", "none", "--no-gallery", "--rps", "1000000"]
        env = {**os.environ, "NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
        started = time.monotonic()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        first_request = None
        while child.poll() is None:
            if first_request is None and fake.stats.generation_requests:
                first_request = time.monotonic() - started
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        stdout, stderr = child.communicate()
    # The child was reaped by poll(): its own usage is RUSAGE_CHILDREN's growth, the largest
    # RSS of any child so far (each measurement runs in a process of its own: see main()).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = _summary_counts(stdout.decode())
    if child.returncode != 0 or not counts:
        sys.exit(f"the CLI exited {child.returncode}: {stderr.decode()[-2000:]}")
    result = {
        "items": items,
        "new": new,
        **counts,
        "elapsed_s": round(elapsed, 2),
        "first_request_s": round(first_request, 2) if first_request is not None else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "load_avg": os.getloadavg(),
    }
    _check(result, items, new)
    return result


def _cli_child(args: argparse.Namespace) -> None:
    print(json.dumps(_measure_cli(args.folder, args.items, args.new)))


def _measure_cli_apart(folder: Path, items: int, new: int) -> dict[str, Any]:
    """`_measure_cli` in a process of its own, so RUSAGE_CHILDREN is that one CLI run's."""
    argv = [sys.executable, "-m", "benchmarks.resume", "--cli-child", "--folder", str(folder)]
    argv += ["--items", str(items), "--new", str(new)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:] + done.stdout[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _restore(folder: Path, items: int, new: int) -> None:
    """Take the lines and files a ``last-new`` run added out again, so runs repeat."""
    manifest = folder / _FILES_PER_DIR_NAME
    added: list[str] = []
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
            with contextlib.suppress(ValueError):
                added += [entry["path"] for entry in json.loads(line).get("files") or []]
        file.truncate(end - len(tail) + keep)
    for name in added:
        if "/" not in name and name not in ("", ".", ".."):
            (folder / name).unlink(missing_ok=True)
    # One pass over the folder (a glob per new item read a million names each time).
    prefixes = tuple(_item(i, new=True)["id"] for i in range(items - new, items))
    with os.scandir(folder) as entries:
        stray = [entry.path for entry in entries if entry.name.startswith(prefixes)]
    for path in stray:
        Path(path).unlink()


CASES = ("skip-all", "last-new", "cli-skip-all", "cli-last-new")


def main() -> None:
    """Build the folder if needed, then run the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/nanogpt-resume-bench"))  # noqa: S108
    parser.add_argument("--legacy", action="store_true", help="manifest lines without stamps")
    parser.add_argument("--only", choices=CASES, action="append", help="this case (repeatable)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cli-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default="http://127.0.0.1:9/api/v1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.cli_child:
        _cli_child(args)
        return
    from nanogpt_async.testing import start_process

    folder = args.folder / ("legacy" if args.legacy else "stamped")
    _build(folder, args.items, legacy=args.legacy)
    results: dict[str, Any] = {"load_avg_before": os.getloadavg(), "rounds": {}}
    for _ in range(args.rounds):
        for case in args.only or CASES:
            new = args.new if case.endswith("last-new") else 0
            if case == "skip-all":
                result = _measure(folder, args.items, 0, args.base_url)
            elif case == "last-new":
                with start_process(latency=0, port=0, api_key=KEY, balance=1e9) as base_url:
                    try:
                        result = _measure(folder, args.items, new, base_url)
                    finally:
                        _restore(folder, args.items, new)
            else:
                try:
                    result = _measure_cli_apart(folder, args.items, new)
                finally:
                    if new:
                        _restore(folder, args.items, new)
            print(case, json.dumps(result), file=sys.stderr)
            results["rounds"].setdefault(case, []).append(result)
    results["load_avg_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
