"""A sharded job seen whole: progress of every shard, and one manifest merged from all.

Both read only the shard manifests (``manifest.shard-IIII-of-NNNN.jsonl``) in the output
folder, as a resume reads them: a torn line is skipped, the latest line of an item wins,
every recorded cost counts. They may run while the shards do (a line is appended whole).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogpt_async._batch._manifest import iter_records, record_number
from nanogpt_async._batch._shards import Shard, shard_manifests
from nanogpt_async._output._files import write_atomic

__all__ = ["MERGED_NAME", "ShardProgress", "job_progress", "merge_manifests"]

#: The merged manifest's default name (the shards' own stay as they are).
MERGED_NAME = "manifest.merged.jsonl"
_UNCERTAIN = "ChargeUncertainError"


@dataclass
class ShardProgress:
    """One shard's counts from its manifest (latest line per item)."""

    shard: Shard
    manifest: Path | None
    done: int = 0
    failed: int = 0
    uncertain: int = 0
    cost: float = 0.0
    first_started: float | None = None
    last_finished: float | None = None

    @property
    def rate(self) -> float | None:
        """Items finished (ok or failed) per second of the shard's recorded span."""
        if self.first_started is None or self.last_finished is None:
            return None
        span = self.last_finished - self.first_started
        worked = self.done + self.failed + self.uncertain
        return worked / span if span > 0 else None

    def as_json(self) -> dict[str, Any]:
        """The counts as a JSON object."""
        return {
            "shard": str(self.shard),
            "manifest": self.manifest.name if self.manifest is not None else None,
            "done": self.done,
            "failed": self.failed,
            "uncertain": self.uncertain,
            "cost": round(self.cost, 10),
            "rate": self.rate,
        }


def _read(shard: Shard, path: Path) -> ShardProgress:
    progress = ShardProgress(shard, path)
    latest: dict[str, dict[str, Any]] = {}
    for record in iter_records(path):
        item_id = record.get("id")
        if not isinstance(item_id, str):
            continue
        latest[item_id] = record
        progress.cost += record_number(record.get("cost")) or 0.0
        started, finished = (
            record_number(record.get("started_at")),
            record_number(record.get("finished_at")),
        )
        if started is not None and (
            progress.first_started is None or started < progress.first_started
        ):
            progress.first_started = started
        if finished is not None and (
            progress.last_finished is None or finished > progress.last_finished
        ):
            progress.last_finished = finished
    for record in latest.values():
        error = record.get("error")
        if record.get("status") == "ok":
            progress.done += 1
        elif isinstance(error, dict) and error.get("type") == _UNCERTAIN:
            progress.uncertain += 1
        else:
            progress.failed += 1
    return progress


def job_progress(folder: Path) -> list[ShardProgress]:
    """Every shard of the job in ``folder``: the ones with a manifest, and the missing ones.

    A shard count with some manifests lists its other shards too (no manifest: not started).
    """
    found = {shard: _read(shard, path) for shard, path in shard_manifests(folder)}
    for count in {shard.count for shard in found}:
        for index in range(count):
            found.setdefault(Shard(index, count), ShardProgress(Shard(index, count), None))
    return sorted(found.values(), key=lambda p: (p.shard.count, p.shard.index))


@dataclass(frozen=True)
class MergeReport:
    """What `merge_manifests` wrote."""

    path: Path
    shards: int
    lines: int
    items: int


def merge_manifests(folder: Path, name: str = MERGED_NAME) -> MergeReport:
    """Write one manifest of every shard's lines, in input order, atomically.

    Every line is kept (a retried item's earlier failures and their costs too), ordered by
    the item's input index, so readers that take an item's latest line (the gallery, a
    resume) see what the shards saw.

    Raises:
        FileNotFoundError: ``folder`` has no shard manifest.
    """
    shards = list(shard_manifests(folder))
    if not shards:
        raise FileNotFoundError(f"no shard manifest (manifest.shard-*.jsonl) in {str(folder)!r}")
    rows: list[tuple[int, float, int, dict[str, Any]]] = []
    for order, (_, path) in enumerate(shards):
        for record in iter_records(path):
            index = record.get("index")
            finished = record_number(record.get("finished_at")) or 0.0
            rows.append((index if isinstance(index, int) else -1, finished, order, record))
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    data = "".join(json.dumps(row[3], ensure_ascii=False) + "\n" for row in rows)
    path = folder / name
    write_atomic(path, data.encode("utf-8"))
    items = len({row[3].get("id") for row in rows})
    return MergeReport(path=path, shards=len(shards), lines=len(rows), items=items)
