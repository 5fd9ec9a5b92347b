"""The manifest as the gallery sees it: one card per item (its latest record) and the totals.

Blocking (reads the manifest): call through a worker thread.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogpt_async._batch._manifest import iter_records, record_number
from nanogpt_async._batch._names import safe_path

__all__ = ["Card", "Picture", "Totals", "read_cards"]


@dataclass(frozen=True, slots=True)
class Picture:
    """One image file of an item: its name in the folder and where its thumbnail goes."""

    name: str
    thumbnail: str
    #: Why the file is not shown (outside the folder, missing); ``None`` when it is.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """What one item's card shows."""

    id: str
    index: int
    prompt: str
    model: str
    size: str
    seed: str
    status: str
    cost: float | None
    error: str | None
    request_id: str | None
    started_at: float | None
    finished_at: float | None
    pictures: tuple[Picture, ...]


@dataclass
class Totals:
    """The numbers at the top of the page."""

    items: int = 0
    ok: int = 0
    failed: int = 0
    #: Every cost recorded, superseded records included: what was paid, not what is shown.
    cost: float = 0.0
    #: The part of ``cost`` on records a later run replaced (a failed item retried, say).
    superseded_cost: float = 0.0


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _error_text(error: object) -> str | None:
    if error is None:
        return None
    if not isinstance(error, Mapping):
        return _text(error)
    kind, status, message = error.get("type"), error.get("status"), error.get("message")
    head = " ".join(_text(part) for part in (kind, status) if part is not None)
    return f"{head}: {_text(message)}" if head else _text(message)


def thumbnail_name(entry: Mapping[str, Any], size: int) -> str:
    """A file name for the thumbnail of a manifest ``files[]`` entry, at ``size`` pixels.

    Derived from the file's name, recorded SHA-256 and length: a regenerated image gets a new
    thumbnail, an unchanged one keeps its old one, and nothing from the manifest reaches the
    file system as a path (the name is hex).
    """
    key = "\0".join(
        (_text(entry.get("path")), _text(entry.get("sha256")), _text(entry.get("bytes")))
    )
    digest = hashlib.sha256(f"{key}\0{size}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest[:32]}.jpg"


def _pictures(folder: Path, files: object, size: int) -> tuple[Picture, ...]:
    if not isinstance(files, list):
        return ()
    pictures = []
    for entry in files:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            continue
        name = entry["path"]
        problem = None
        try:
            path = safe_path(folder, name)
            # safe_path checks the name; a symlink at it may still point out of the folder,
            # and the page must show nothing it did not write itself.
            escapes = path.is_symlink()
        except (ValueError, OSError):
            escapes = True
        if escapes:
            problem = "outside the folder: not shown"
        elif not path.is_file():
            problem = "file missing"
        pictures.append(Picture(name, thumbnail_name(entry, size), problem))
    return tuple(pictures)


def _card(folder: Path, record: Mapping[str, Any], size: int) -> Card:
    params = record.get("params")
    params = params if isinstance(params, Mapping) else {}
    index = record.get("index")
    return Card(
        id=_text(record["id"]),
        index=index if isinstance(index, int) and not isinstance(index, bool) else -1,
        prompt=_text(record.get("prompt")),
        model=_text(params.get("model")) or "default",
        size=_text(params.get("size")) or "default",
        seed=_text(params.get("seed")) or "-",
        status=_text(record["status"]),
        cost=record_number(record.get("cost")),
        error=_error_text(record.get("error")),
        request_id=_text(record.get("request_id")) or None,
        started_at=record_number(record.get("started_at")),
        finished_at=record_number(record.get("finished_at")),
        pictures=_pictures(folder, record.get("files"), size),
    )


def read_cards(folder: Path, manifest: Path, size: int) -> tuple[list[Card], Totals]:
    """The cards of ``manifest`` (latest record per id, in input order) and the totals."""
    latest: dict[str, Mapping[str, Any]] = {}
    totals = Totals()
    costs: list[float] = []
    for record in iter_records(manifest):
        item_id = record["id"]
        previous = latest.get(item_id)
        if previous is not None:
            totals.superseded_cost = math.fsum(
                (totals.superseded_cost, record_number(previous.get("cost")) or 0.0)
            )
        cost = record_number(record.get("cost"))
        if cost is not None:
            costs.append(cost)
        latest[item_id] = record
    cards = sorted((_card(folder, record, size) for record in latest.values()), key=_input_order)
    totals.cost = math.fsum(costs)
    _count(cards, totals)
    return cards, totals


def _input_order(card: Card) -> tuple[int, str]:
    return (card.index, card.id)


def _count(cards: Iterable[Card], totals: Totals) -> None:
    for card in cards:
        totals.items += 1
        if card.status == "ok":
            totals.ok += 1
        else:
            totals.failed += 1
