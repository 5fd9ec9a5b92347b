"""Soak: 20,000 items with faults injected through the batch runner, into a folder.

Proves, at a scale no unit test reaches, that memory stays flat over a long batch and that every
item is accounted for in the manifest (ok, or failed with a recorded error), then that a resumed
run finishes the failed ones without redoing the ok ones.

Run: ``python -m benchmarks.soak [--items 20000] [--concurrency 64]``. The fake server runs in
its own process on loopback; RSS is sampled from this process every half second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from nanogpt_async import AsyncNanoGPT, BatchSummary
from nanogpt_async.testing import start_process

KEY = "soak-key"
FAULTS: dict[str, Any] = {
    "latency": 0.02,
    "latency_jitter": 0.01,
    "error_rate": 0.03,  # 5xx before charging: retried by the client
    "reset_rate": 0.002,  # charged, then reset mid-response: recorded failed, not retried
    "url_fallback_rate": 0.1,
    "seed": 7,
    "balance": 1e9,  # the fake's default $100 is exactly 20,000 images: the resume would 402
}


def _items(count: int) -> Any:
    # A generator: the runner must read it lazily, so the input list never sits in memory.
    for index in range(count):
        fmt = "url" if index % 2 else "b64_json"
        yield {"prompt": f"soak prompt {index} of a lighthouse", "response_format": fmt}


def _mb(value: float) -> float:
    return round(value / 1024 / 1024, 1)


async def _run_once(
    base_url: str, out: Path, count: int, concurrency: int
) -> tuple[BatchSummary, list[tuple[float, int]]]:
    process = psutil.Process()
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - started, process.memory_info().rss))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        async with AsyncNanoGPT(
            api_key=KEY, base_url=base_url, max_connections=concurrency
        ) as client:
            batch = client.images.generate_many(
                _items(count), output_dir=out, concurrency=concurrency, rps=None, total=count
            )
            summary = await batch.run()
    finally:
        sampler.cancel()
    samples.append((time.monotonic() - started, process.memory_info().rss))
    return summary, samples


def _manifest_status(out: Path) -> Counter[str]:
    latest: dict[str, str] = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        latest[row["id"]] = row["status"]
    return Counter(latest.values())


def _memory_report(samples: list[tuple[float, int]]) -> dict[str, float | list[float]]:
    rss = [value for _, value in samples]
    tenth = max(1, len(rss) // 10)
    early = statistics.median(rss[tenth : 2 * tenth] or rss[:1])
    late = statistics.median(rss[-tenth:])
    quarters = [
        _mb(statistics.median(rss[q * len(rss) // 4 : (q + 1) * len(rss) // 4] or rss[-1:]))
        for q in range(4)
    ]
    return {
        "rss_by_quarter_median_mb": quarters,  # flat, or still climbing?
        "rss_start_mb": _mb(rss[0]),
        "rss_early_median_mb": _mb(early),
        "rss_late_median_mb": _mb(late),
        "rss_peak_mb": _mb(max(rss)),
        "growth_early_to_late_mb": _mb(late - early),
    }


async def main(count: int, concurrency: int) -> dict[str, Any]:
    """Run the soak and its resume; return the figures."""
    with tempfile.TemporaryDirectory() as tmp, start_process(api_key=KEY, **FAULTS) as base_url:
        out = Path(tmp) / "soak"
        first, samples = await _run_once(base_url, out, count, concurrency)
        after_first = _manifest_status(out)
        second, _ = await _run_once(base_url, out, count, concurrency)
        after_second = _manifest_status(out)
        files = sum(1 for path in out.iterdir() if path.name != "manifest.jsonl")
    return {
        "items": count,
        "concurrency": concurrency,
        "faults": FAULTS,
        "first_run": {
            "elapsed_s": round(first.elapsed, 1),
            "rate_per_s": round(first.rate, 1),
            "ok": first.ok,
            "failed": first.failed,
            "stopped_reason": first.stopped_reason,
            "manifest": dict(after_first),
            "accounted_for": sum(after_first.values()) == count,
            **_memory_report(samples),
        },
        "resume_run": {
            "elapsed_s": round(second.elapsed, 1),
            "skipped": second.skipped,
            "ok": second.ok,
            "failed": second.failed,
            "stopped_reason": second.stopped_reason,
            "manifest": dict(after_second),
        },
        "files_written": files,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args.items, args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
