"""What the batch runner takes and gives back: items, per-item results, progress, summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nanogpt_async._errors import NanoGPTError

__all__ = [
    "BatchItem",
    "BatchProgress",
    "BatchSummary",
    "ItemResult",
    "ItemStatus",
    "StoppedReason",
]

#: How an item ended: generated and saved, failed, or skipped because a previous run did it.
ItemStatus = Literal["ok", "failed", "skipped"]

#: Why a batch ended before its input did (``"fatal: ..."`` names the error).
StoppedReason = str


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request of a batch: a prompt, an optional stable id, and any ``generate`` field.

    Plain strings and dicts (``{"prompt": ..., "id": ..., "size": ...}``) are accepted too;
    this is the typed spelling of the same thing.

    Attributes:
        prompt: What to draw.
        id: Your id for the item (used in the manifest and for resume); default: a hash of
            the request plus its occurrence index, so duplicate prompts stay distinct.
        params: More ``generate()`` fields by Python name (``model``, ``size``, ``n``,
            ``seed``, ``image``...); they override the batch-wide defaults.

    Example:
        >>> BatchItem("a lighthouse at dusk", id="lh-1", params={"seed": 7})
        BatchItem(prompt='a lighthouse at dusk', id='lh-1', params={'seed': 7})
    """

    prompt: str
    id: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """How one item of a batch ended.

    Attributes:
        id: The item id (yours, or the stable hash).
        index: Position of the item in the input, from 0.
        request: The JSON fields sent (input-image data URLs replaced by a short placeholder).
        status: ``"ok"``, ``"failed"`` or ``"skipped"`` (done by an earlier run).
        images: The image bytes (in-memory mode, no ``output_dir``).
        files: The written files (with ``output_dir``).
        cost: What NanoGPT charged for it (USD), when it said.
        attempts: Requests sent for it, retries included.
        started_at: ``time.time()`` when the item started.
        finished_at: ``time.time()`` when it ended.
        latency: Seconds of the generation request that answered.
        download_delay: Seconds from the generation answer to the bytes being in hand (and
            written): how close a signed URL came to expiring.
        error: Why it failed (one of the client's errors), else ``None``.
        request_id: NanoGPT's ``X-Request-ID`` of the answer, to quote to support.
    """

    id: str
    index: int
    request: Mapping[str, Any]
    status: ItemStatus
    images: list[bytes] = field(default_factory=list, repr=False)
    files: list[Path] = field(default_factory=list)
    cost: float | None = None
    attempts: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    latency: float | None = None
    download_delay: float | None = None
    error: NanoGPTError | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot for progress bars, passed to ``on_progress``.

    Attributes:
        total: Items in the input, when known (a sized input or ``total=``), else ``None``.
        done: Items finished (ok + failed + skipped).
        ok: Items generated and saved in this run.
        failed: Items that failed.
        skipped: Items an earlier run already did.
        in_flight: Items started and not finished.
        cost: USD charged so far in this run.
        rate: Items per second finished by this run (skips excluded).
        eta: Seconds left at that rate, when ``total`` is known.
        elapsed: Seconds since the batch started.
    """

    total: int | None
    done: int
    ok: int
    failed: int
    skipped: int
    in_flight: int
    cost: float
    rate: float
    eta: float | None
    elapsed: float


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The outcome of a batch (final once the ``async with`` block has exited).

    Attributes:
        total: Items in the input: its length (a sized input or ``total=``), else the items
            read, which is all of them unless ``unread_input``.
        ok: Items generated and saved.
        failed: Items that failed.
        skipped: Items an earlier run already did.
        not_started: Items never sent (the batch stopped first); a re-run does them. With
            ``unread_input``, only those read: the unread rest is not counted.
        cost: USD charged in this run.
        elapsed: Seconds the batch ran.
        rate: Items per second finished by this run.
        latency_p50: Median generation latency of ok items (seconds).
        latency_p99: 99th percentile generation latency.
        download_delay_p50: Median generation-to-bytes delay.
        download_delay_p99: 99th percentile of it.
        download_delay_max: Its maximum.
        attempts: Generation requests sent, retries included.
        rate_limited: 429 answers seen.
        stopped_reason: ``None`` when the input was exhausted; ``"fatal: ..."`` after an error
            no retry fixes (bad key, no balance, daily cap...), ``"budget"`` when ``max_cost``
            was reached, ``"stopped"`` after [Batch.stop][nanogpt_async.Batch.stop] (items in
            flight finished and were saved), ``"cancelled"`` when the batch was cancelled,
            also after a stop (requests in flight were abandoned; answers already received
            were saved), ``"input error: ..."`` when reading the input raised.
        fatal_error: The error that stopped the batch, for ``"fatal: ..."``.
        manifest: The manifest file, with ``output_dir``.
        unpriced: Requests charged, or maybe charged, whose answer stated no real price
            (``cost`` missing, not a number, negative; or the answer was lost). ``cost``
            leaves them out; ``max_cost`` counted each at its estimate.
        unread_input: The batch stopped before the end of an input of unknown length (a
            stream or generator, no ``total=``): how many items were left is not known, and
            ``total`` and ``not_started`` count only the items read.

    Percentiles are computed from a uniform sample of at most 10,000 items.
    """

    total: int
    ok: int
    failed: int
    skipped: int
    not_started: int
    cost: float
    elapsed: float
    rate: float
    latency_p50: float | None
    latency_p99: float | None
    download_delay_p50: float | None
    download_delay_p99: float | None
    download_delay_max: float | None
    attempts: int
    rate_limited: int
    stopped_reason: StoppedReason | None
    fatal_error: NanoGPTError | None
    manifest: Path | None
    unpriced: int = 0
    unread_input: bool = False
