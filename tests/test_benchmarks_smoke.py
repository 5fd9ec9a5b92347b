"""The benchmark harness and every contender run end to end on a tiny workload (no timing).

The harness's own path (a fake server process, one worker process per job, the result line,
the summary with its ratios to the floor, the report) is run with two contenders; every other
contender runs in this process against a fake on a thread, through the same `run_here` the
worker process calls. Each worker process cost 0.3-1.0 s of CPU, most of it importing its
contender's HTTP stack (openai: 0.9 s), and the test ran eight of them plus a server (5.3 s).
"""

from __future__ import annotations

import pytest

from benchmarks._harness import run_workload, unavailable_reason
from benchmarks._job import Job
from benchmarks._report import markdown
from benchmarks._worker import run_here
from benchmarks._workloads import Workload
from benchmarks.contenders import CONTENDERS, FLOOR
from nanogpt_async.testing import FakeNanoGPT

pytestmark = pytest.mark.slow

KEY = "test-key"
GENERATIONS = 12
#: Run by the harness in worker processes: the floor (the summary's ratios are to it) and the
#: project's own batch runner.
IN_WORKER_PROCESSES = (FLOOR, "nanogpt-async batch")


def test_harness_runs_each_job_in_a_worker_process_and_reports_a_row_per_contender() -> None:
    contenders = list(IN_WORKER_PROCESSES)
    assert [unavailable_reason(name) for name in contenders] == [None, None]
    tiny = Workload(
        name="W1",
        title="smoke",
        generations=GENERATIONS,
        n=1,
        concurrencies=(4,),
        response_format="b64_json",
        server={"latency": 0, "seed": 1, "api_key": KEY},
        rps=None,
        lag_probe=True,
        contenders=tuple(contenders),
        bars="none",
    )

    result = run_workload(tiny, contenders, rounds=1, log=lambda _: None)

    rows = result["rows"]
    assert sorted(row["contender"] for row in rows) == sorted(contenders)
    assert all(row["ok"] for row in rows), [row.get("error") for row in rows]
    assert all(row["images"] == GENERATIONS for row in rows)
    assert all(row["loop_lag_p99_ms"] is not None for row in rows)  # the probe ran
    summary = result["variants"][0]["summary"]
    assert [entry["contender"] for entry in summary] == contenders
    assert all(entry["makespan_s_ratio"] is not None for entry in summary)
    text = markdown(
        {
            "meta": {"date": "today", "machine": "here", "rounds": 1, "quick": True},
            "workloads": [result],
        }
    )
    assert all(f"| {name} |" in text for name in contenders)


@pytest.mark.parametrize("contender", [c for c in CONTENDERS if c not in IN_WORKER_PROCESSES])
def test_every_other_contender_reads_every_image_of_a_tiny_workload(contender: str) -> None:
    reason = unavailable_reason(contender)
    if reason is not None:
        pytest.skip(f"{contender} cannot run here: {reason}")
    with FakeNanoGPT(latency=0, seed=1, api_key=KEY).run_in_thread() as server:
        job = Job(
            contender=contender,
            workload="W1",
            base_url=server.base_url,
            api_key=KEY,
            generations=GENERATIONS,
            n=1,
            concurrency=4,
            response_format="b64_json",
            rps=None,
            lag_probe=False,  # run by the harness test; it costs CPU, not correctness
            timeout_s=60,
        )
        row = run_here(job)
        stats = server.fake.stats
    assert row["ok"], row["error"]
    assert row["images"] == GENERATIONS
    # Every generation made once, none twice or skipped (the fake charges each it completes).
    assert (stats.generations, stats.images_generated) == (GENERATIONS, GENERATIONS)
