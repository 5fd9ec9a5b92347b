"""The ``status`` and ``merge`` commands: a sharded job's output folder seen whole."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import click

from nanogpt_async._batch._shard_report import ShardProgress, job_progress
from nanogpt_async._cli._common import output

__all__ = ["fence_claims", "print_status"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def print_status(
    progress: list[ShardProgress], claims: dict[str, int] | None, *, as_json: bool
) -> None:
    """One line per shard and a total (or one JSON object), on standard output."""
    done = sum(p.done for p in progress)
    failed = sum(p.failed for p in progress)
    uncertain = sum(p.uncertain for p in progress)
    cost = sum(p.cost for p in progress)
    starts = [p.first_started for p in progress if p.first_started is not None]
    ends = [p.last_finished for p in progress if p.last_finished is not None]
    span = max(ends) - min(starts) if starts and ends else 0.0
    rate = (done + failed + uncertain) / span if span > 0 else None
    if as_json:
        total = {"done": done, "failed": failed, "uncertain": uncertain, "cost": cost}
        document = {"shards": [p.as_json() for p in progress], "total": {**total, "rate": rate}}
        if claims is not None:
            document["claims"] = claims
        output.out(json.dumps(document))
        return
    for p in progress:
        if p.manifest is None:
            output.out(f"shard {p.shard!s:>9}  not started (no {p.shard.manifest_name})")
            continue
        output.out(
            f"shard {p.shard!s:>9}  done {p.done:>7}  failed {p.failed:>5}  "
            f"uncertain {p.uncertain:>4}  cost ${p.cost:.4f}  rate {_rate(p.rate)}"
        )
    output.out(
        f"total {len(progress)} shard(s)  done {done}  failed {failed}  uncertain {uncertain}  "
        f"cost ${cost:.4f}  rate {_rate(rate)}"
    )
    if claims is not None:
        output.out(
            f"redis: {claims['live']} item(s) being done now, {claims['uncertain']} claimed by "
            "a process that stopped (uncertain: may have been charged; --retry-ambiguous "
            "generates them again)"
        )


def fence_claims(out: Path, limits_url: str, api_key: str, job_id: str | None) -> dict[str, int]:
    """``{"live": n, "uncertain": m}``: the claims the job's fence holds in Redis now."""
    from nanogpt_async._batch._fence import RedisFence

    fence = RedisFence(limits_url, key=api_key, job_id=job_id or str(out.resolve()), folder=out)

    async def read() -> dict[str, str]:
        try:
            return await fence.claims()
        finally:
            await fence.aclose()

    states = anyio.run(read)
    return {
        "live": sum(1 for state in states.values() if state == "live"),
        "uncertain": sum(1 for state in states.values() if state == "uncertain"),
    }


def require_shards(out: Path) -> list[ShardProgress]:
    """The job's shards, or a usage error naming what is missing."""
    progress = job_progress(out)
    if not progress:
        raise click.BadParameter(
            f"no shard manifest (manifest.shard-*.jsonl) in {str(out)!r}: point it at the -o "
            "folder of `nanogpt-async batch --shard`",
            param_hint="OUT",
        )
    return progress
