"""Recovery after 429s (issue 10, item 15): a default batch against a server allowing less.

The batch runs with every default (25 req/s, concurrency 64, 2 retries) against the fake at
``--server-rate`` req/s (its bucket holds as many), 1 s latency, for ``--seconds`` worth of
items at that rate. Reported: items/s (ok items over the run), failed items, 429 answers,
and the longest time without a request being sent.

Run: ``python -m benchmarks.recovery --server-rate 10`` (it only uses API older than the fix,
so ``PYTHONPATH=<old checkout>`` measures the code before it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time

from nanogpt_async import AsyncNanoGPT
from nanogpt_async.testing import start_process

KEY = "recovery-key"


async def _run(base_url: str, items: int) -> dict[str, object]:
    import httpx

    sends: list[float] = []
    refused = 0

    async def on_request(_: httpx.Request) -> None:
        sends.append(time.monotonic())

    async def on_response(response: httpx.Response) -> None:
        nonlocal refused
        if response.status_code == 429:
            refused += 1

    async with AsyncNanoGPT(api_key=KEY, base_url=base_url) as client:
        client.channel.pools.api.event_hooks = {"request": [on_request], "response": [on_response]}
        started = time.monotonic()
        summary = await client.images.generate_many(
            [f"recovery {i}" for i in range(items)], concurrency=64
        ).run()
        elapsed = time.monotonic() - started
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    return {
        "items": items,
        "ok": summary.ok,
        "failed": summary.failed,
        "items_per_s": round(summary.ok / elapsed, 2),
        "elapsed_s": round(elapsed, 1),
        "requests": len(sends),
        "http_429": refused,
        "longest_gap_s": round(max(gaps), 2) if gaps else None,
        "gaps_over_2s": sum(g > 2 for g in gaps),
        "load_avg": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__)
    parser.add_argument("--server-rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    items = int(args.server_rate * args.seconds)
    with start_process(
        api_key=KEY, latency=1.0, rate_limit=args.server_rate, balance=1e9, seed=1
    ) as base_url:
        result = asyncio.run(_run(base_url, items))
    print(json.dumps({"server_rate": args.server_rate, **result}))


if __name__ == "__main__":
    main()
