"""The benchmark harness runs end to end on a tiny workload (no timing is asserted)."""

from __future__ import annotations

import pytest

from benchmarks._harness import run_workload, unavailable_reason
from benchmarks._report import markdown
from benchmarks._workloads import Workload
from benchmarks.contenders import CONTENDERS

pytestmark = pytest.mark.slow


def test_harness_produces_a_row_per_contender_on_a_tiny_workload() -> None:
    contenders = [name for name in CONTENDERS if unavailable_reason(name) is None]
    tiny = Workload(
        name="W1",
        title="smoke",
        generations=12,
        n=1,
        concurrencies=(4,),
        response_format="b64_json",
        server={"latency": 0, "seed": 1, "api_key": "test-key"},
        rps=None,
        lag_probe=True,
        contenders=tuple(contenders),
        bars="none",
    )

    result = run_workload(tiny, contenders, rounds=1, log=lambda _: None)

    rows = result["rows"]
    assert sorted(row["contender"] for row in rows) == sorted(contenders)
    assert all(row["ok"] for row in rows), [row.get("error") for row in rows]
    assert all(row["images"] == 12 for row in rows)
    summary = result["variants"][0]["summary"]
    assert [entry["contender"] for entry in summary] == contenders
    text = markdown(
        {
            "meta": {"date": "today", "machine": "here", "rounds": 1, "quick": True},
            "workloads": [result],
        }
    )
    assert all(f"| {name} |" in text for name in contenders)
