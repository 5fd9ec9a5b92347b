"""Runs the workloads: one fake server process per workload, one worker process per job."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from benchmarks._job import Job
from benchmarks._worker import RESULT_PREFIX
from benchmarks._workloads import Workload
from benchmarks.contenders import CONTENDERS, FLOOR
from nanogpt_async.testing._server import start_process

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Metrics whose median across rounds is reported.
_METRICS = (
    "makespan_s",
    "cpu_ms_per_request",
    "peak_rss_mb",
    "rss_start_mb",
    "loop_lag_p99_ms",
    "loop_lag_max_ms",
    "http_429",
    "expired",
    "failures",
    "gen_to_download_p99_s",
)

Log = Callable[[str], None]


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def raise_fd_limit() -> None:
    """Let this process and its children (the fake server) hold a thousand-plus sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def unavailable_reason(contender: str) -> str | None:
    """Why a contender cannot run here (not installed, not built yet), or ``None``."""
    try:
        importlib.import_module(CONTENDERS[contender])
    except (ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_job(job: Job) -> dict[str, Any]:
    """Run one job in a fresh interpreter; a crash or timeout becomes a failed row."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "benchmarks._worker", json.dumps(job.to_json())]
    failed: dict[str, Any] = {"contender": job.contender, "workload": job.workload, "ok": False}
    try:
        done = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
            argv,
            capture_output=True,
            text=True,
            timeout=job.timeout_s + 60,
            cwd=REPO_ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"worker killed after {job.timeout_s + 60:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            row: dict[str, Any] = json.loads(line.removeprefix(RESULT_PREFIX))
            return row
    tail = done.stderr.strip().splitlines()[-5:]
    return {**failed, "error": f"worker exit {done.returncode}: {' | '.join(tail)}"[:800]}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(rows: list[dict[str, Any]], contenders: Sequence[str]) -> list[dict[str, Any]]:
    """Median per contender across rounds, and per-round ratios to the floor (median)."""
    floor_by_round = {r["round"]: r for r in rows if r["contender"] == FLOOR and r.get("ok")}
    summary = []
    for contender in contenders:
        mine = [r for r in rows if r["contender"] == contender]
        ok = [r for r in mine if r.get("ok")]
        use = ok or mine
        entry: dict[str, Any] = {
            "contender": contender,
            "rounds": len(mine),
            "ok_rounds": len(ok),
            "errors": sorted({str(r.get("error")) for r in mine if r.get("error")})[:3],
        }
        for metric in _METRICS:
            entry[metric] = _median([r.get(metric) for r in use])
        for metric in ("makespan_s", "cpu_ms_per_request"):
            ratios = [
                r[metric] / floor_by_round[r["round"]][metric]
                for r in ok
                if r["round"] in floor_by_round and floor_by_round[r["round"]][metric]
            ]
            entry[f"{metric}_ratio"] = statistics.median(ratios) if ratios else None
        summary.append(entry)
    return summary


def run_workload(
    workload: Workload, contenders: Sequence[str], rounds: int, log: Log = _log
) -> dict[str, Any]:
    """Every contender on every concurrency of ``workload``, ``rounds`` times, alternating."""
    cells = [(c, name) for c in workload.concurrencies for name in contenders]
    rows: list[dict[str, Any]] = []
    log(f"== {workload.name}: {workload.title} ({len(cells)} jobs x {rounds} rounds)")
    with start_process(**cast("dict[str, Any]", workload.server)) as base_url:
        for round_no in range(rounds):
            # Rotate the order each round so no contender always runs first (cold server) or
            # right after the same neighbour.
            shift = round_no % len(cells)
            for concurrency, name in cells[shift:] + cells[:shift]:
                job = Job(
                    contender=name,
                    workload=workload.label(concurrency),
                    base_url=base_url,
                    api_key=str(workload.server.get("api_key", "test-key")),
                    generations=workload.generations,
                    n=workload.n,
                    concurrency=concurrency,
                    response_format=workload.response_format,
                    rps=workload.rps,
                    lag_probe=workload.lag_probe,
                    timeout_s=workload.timeout_s(concurrency),
                )
                started = time.perf_counter()
                row = run_job(job)
                row.update(round=round_no, concurrency=concurrency)
                rows.append(row)
                log(_one_line(row, time.perf_counter() - started))
    variants = []
    for concurrency in workload.concurrencies:
        label = workload.label(concurrency)
        mine = [r for r in rows if r["workload"] == label]
        variants.append(
            {
                "label": label,
                "concurrency": concurrency,
                "summary": summarise(mine, contenders),
            }
        )
    return {
        "workload": dataclasses.asdict(workload),
        "ideal_s": {str(c): workload.ideal_s(c) for c in workload.concurrencies},
        "variants": variants,
        "rows": rows,
    }


def _one_line(row: dict[str, Any], took: float) -> str:
    if not row.get("ok") and "makespan_s" not in row:
        return (
            f"  r{row['round']} {row['workload']:<10} {row['contender']:<24} FAILED {row['error']}"
        )
    text = (
        f"  r{row['round']} {row['workload']:<10} {row['contender']:<24} "
        f"{row['makespan_s']:7.2f} s  {row['cpu_ms_per_request']:7.3f} ms/req  "
        f"rss {row['peak_rss_mb']:6.1f} MB  429s {row['http_429']:4d}  "
        f"expired {row['expired']}  ({took:.1f} s)"
    )
    if row.get("loop_lag_p99_ms") is not None:
        text += f"  lag p99 {row['loop_lag_p99_ms']:.1f} ms"
    if row.get("gen_to_download_p99_s") is not None:
        text += f"  gen->dl p99 {row['gen_to_download_p99_s']:.3f} s"
    if not row.get("ok"):
        text += f"  NOT OK: {row.get('error')}"
    return text
