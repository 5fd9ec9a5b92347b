"""A batch's settings: every ``generate_many`` argument checked once, then frozen.

Nothing here runs anything: a bad argument raises `InvalidInputError` before the batch
exists, so nothing is sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from os import PathLike
from pathlib import Path
from typing import Any

from nanogpt_async._batch._results import BatchProgress
from nanogpt_async._batch._shards import Shard
from nanogpt_async._errors import InvalidInputError
from nanogpt_async._input._body import check_generation_fields
from nanogpt_async._input._numbers import whole_number
from nanogpt_async._types import NotGiven

__all__ = ["BatchSettings", "ProgressCallback"]

ProgressCallback = Callable[[BatchProgress], object]
#: A shard's manifest is named after it unless the caller named the manifest.
_DEFAULT_MANIFEST = "manifest.jsonl"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """What one batch was asked to do, checked; built by `BatchSettings.check`."""

    concurrency: int
    #: Never above the client's connection pool: more workers would only queue.
    download_concurrency: int
    rps: float | NotGiven | None
    burst: int | None
    max_cost: Decimal | None
    shared_budget: str | None
    retry_failed: bool
    #: Hand out a ``skipped`` result per item an earlier run did (else only count them).
    skipped_results: bool
    on_progress: ProgressCallback | None
    progress_interval: float
    #: Items this process does (its shard's share), when known.
    total: int | None
    defaults: Mapping[str, Any]
    shard: Shard | None
    folder: Path | None
    manifest_path: Path | None
    job_id: str | None
    fence_lease: float

    @classmethod
    def check(
        cls,
        *,
        max_connections: int,
        items: object,
        output_dir: str | PathLike[str] | None,
        concurrency: int,
        rps: float | NotGiven | None,
        burst: int | None,
        download_concurrency: int,
        max_cost: float | Decimal | None,
        shared_budget: str | None,
        retry_failed: bool,
        skipped_results: bool,
        on_progress: ProgressCallback | None,
        progress_interval: float,
        manifest_name: str,
        total: int | None,
        defaults: Mapping[str, Any] | None,
        shard: tuple[int, int] | Shard | None,
        job_id: str | None,
        fence_lease: float,
    ) -> BatchSettings:
        """Check every argument (in this order) and return them frozen.

        Raises:
            InvalidInputError: the first bad argument, saying what it must be.
        """
        concurrency, download_concurrency = _check_concurrency(
            concurrency, download_concurrency, max_connections
        )
        _check_rps(rps)
        if burst is not None:
            whole_number("burst", burst, low=1)
        _check_max_cost(max_cost)
        if not progress_interval > 0:
            raise InvalidInputError(f"progress_interval must be > 0, got {progress_interval!r}")
        _check_manifest_name(manifest_name)
        if total is not None and (isinstance(total, bool) or total < 0):
            raise InvalidInputError(f"total must be >= 0, got {total!r}")
        checked_defaults = _check_defaults(defaults)
        if total is None and hasattr(items, "__len__"):
            total = len(items)
        checked_shard = _shard(shard)
        if checked_shard is not None:
            total = checked_shard.size(total) if total is not None else None
            if manifest_name == _DEFAULT_MANIFEST:
                manifest_name = checked_shard.manifest_name
        folder = Path(output_dir) if output_dir is not None else None
        return cls(
            concurrency=concurrency,
            download_concurrency=download_concurrency,
            rps=rps,
            burst=burst,
            max_cost=Decimal(str(max_cost)) if max_cost is not None else None,
            shared_budget=shared_budget,
            retry_failed=retry_failed,
            skipped_results=skipped_results,
            on_progress=on_progress,
            progress_interval=progress_interval,
            total=total,
            defaults=checked_defaults,
            shard=checked_shard,
            folder=folder,
            manifest_path=folder / manifest_name if folder is not None else None,
            job_id=job_id,
            fence_lease=fence_lease,
        )


def _check_concurrency(
    concurrency: object, download_concurrency: object, limit: int
) -> tuple[int, int]:
    checked = whole_number("concurrency", concurrency, low=1)
    downloads = whole_number("download_concurrency", download_concurrency, low=1)
    if checked > limit:
        raise InvalidInputError(
            f"concurrency ({checked}) must not exceed the client's connection pool "
            f"(max_connections={limit}): requests beyond it would only queue for a "
            "connection and time out. Lower it or create the client with "
            f"AsyncNanoGPT(max_connections={checked})"
        )
    # Downloads have a pool of the same size of their own; more workers would only queue.
    return checked, min(downloads, limit)


def _check_rps(rps: object) -> None:
    if isinstance(rps, NotGiven) or rps is None:
        return
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf:
        raise InvalidInputError(f"rps must be a positive number or None, got {rps!r}")


def _check_max_cost(max_cost: object) -> None:
    if max_cost is None:
        return
    if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float, Decimal)):
        raise InvalidInputError(f"max_cost must be a number of USD, got {max_cost!r}")
    if not max_cost >= 0:
        raise InvalidInputError(f"max_cost must be >= 0, got {max_cost!r}")


def _check_manifest_name(name: str) -> None:
    if not name or name in (".", "..") or any(sep in name for sep in "/\\\0"):
        raise InvalidInputError(f"manifest_name must be a plain file name, not {name!r}")


def _check_defaults(defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    checked = dict(defaults or {})
    for reserved in ("prompt", "id"):
        if reserved in checked:
            raise InvalidInputError(f"{reserved!r} is per item, not a batch default")
    check_generation_fields({"prompt": "defaults check", **checked})
    return checked


_SHARD_FIELDS = ("index", "count")


def _shard(shard: tuple[int, int] | Shard | None) -> Shard | None:
    if shard is None or isinstance(shard, Shard):
        return shard
    if not isinstance(shard, tuple) or len(shard) != len(_SHARD_FIELDS):
        raise InvalidInputError(f"shard must be (index, count), got {shard!r}")
    try:
        return Shard(*shard)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
