"""One contender, one workload, one fresh process: ``python -m benchmarks._worker '<job json>'``.

Prints one line ``RESULT <json>`` on stdout. The measured window starts after every import and
ends when the contender has read every image's bytes; CPU is the process's user+system time
(all threads, so work pushed to worker threads counts), peak RSS is ``ru_maxrss``.

The loop-lag ticker sleeps 1 ms and records how late it wakes. On this kind of VM each wake-up
costs 80-120 us of CPU, i.e. up to ~90 ms of CPU per second of an otherwise idle loop: enough to
swamp CPU-per-request (5 ms/request at W6's concurrency 16). So it runs only in the workloads
whose question is latency (``Job.lag_probe``), not where CPU per request is the bar.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import resource
import sys
import time
import traceback
from typing import Any

from benchmarks._job import Job, Probe
from benchmarks.contenders import CONTENDERS, Runner

RESULT_PREFIX = "RESULT "
_TICK = 0.001


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _tick(lags: list[float]) -> None:
    clock = time.perf_counter
    while True:
        start = clock()
        await asyncio.sleep(_TICK)
        lags.append(clock() - start - _TICK)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:  # noqa: PTH123
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: reset by exec, unlike ``ru_maxrss`` on Linux)."""
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    """User+system CPU of this process and of its finished children (W10 runs jobs in one)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


async def measure(job: Job, run: Runner) -> dict[str, Any]:
    """Run ``run`` under the probes; return the result row."""
    probe = Probe()
    lags: list[float] = []
    error: str | None = None
    ticker = asyncio.create_task(_tick(lags)) if job.lag_probe else None
    rss_start = _status_mb("VmRSS:")
    cpu_start, wall_start = _cpu(), time.perf_counter()
    try:
        await asyncio.wait_for(run(job, probe), job.timeout_s)
    except asyncio.TimeoutError:
        error = f"timed out after {job.timeout_s:.0f} s"
    except Exception as exc:
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:500]
    wall = time.perf_counter() - wall_start
    cpu = _cpu() - cpu_start
    if ticker is not None:
        ticker.cancel()
    expected = job.generations * job.n
    complete = error is None and probe.images + probe.expired == expected
    if error is None and not complete:
        error = f"read {probe.images} images (+{probe.expired} expired) of {expected}"
    lag_p99 = percentile(lags, 0.99)
    delay_p99 = percentile(probe.gen_to_download, 0.99)
    return {
        "contender": job.contender,
        "workload": job.workload,
        "ok": complete,
        "error": error,
        "requests": job.generations,
        "images": probe.images,
        "image_mb": probe.image_bytes / 1e6,
        "makespan_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_request": cpu / job.generations * 1000,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak_rss_mb(),
        "loop_lag_p99_ms": None if lag_p99 is None else lag_p99 * 1000,
        "loop_lag_max_ms": max(lags) * 1000 if lags else None,
        "http_429": probe.rate_limited,
        "expired": probe.expired,
        "failures": probe.failures,
        "errors": probe.errors,
        "gen_to_download_p99_s": delay_p99,
        "downloads": len(probe.gen_to_download),
    }


def run_here(job: Job) -> dict[str, Any]:
    """Import ``job``'s contender, then run and measure it in this process; the result row."""
    # Import the contender (and its HTTP stack) before the clock starts.
    module = importlib.import_module(CONTENDERS[job.contender])
    run: Runner = module.run
    return asyncio.run(measure(job, run))


def main(argv: list[str]) -> int:
    job = Job.from_json(json.loads(argv[1]))
    _raise_fd_limit()
    result = run_here(job)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
