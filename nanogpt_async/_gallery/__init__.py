"""A batch folder's gallery: ``index.html`` to review every image with its prompt and cost.

```
manifest.jsonl --(latest record per item)--> cards + totals
   files[] --(Pillow, a few worker threads, only the missing ones)--> .thumbs/*.jpg
   cards --(escaped, one static page, no network)--> index.html
```
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from nanogpt_async._gallery._page import render_page
from nanogpt_async._gallery._records import Card, Totals, read_cards
from nanogpt_async._gallery._thumbs import (
    THUMBNAIL_DIR,
    Job,
    make_thumbnails,
    missing,
    require_pillow,
    sweep,
)
from nanogpt_async._output._files import write_atomic

__all__ = ["GalleryReport", "build_gallery", "require_pillow", "write_gallery"]

#: The page's file name in the output folder.
PAGE_NAME = "index.html"


@dataclass(frozen=True)
class GalleryReport:
    """What `build_gallery` did (the CLI prints it)."""

    page: Path
    totals: Totals
    thumbnails_made: int
    thumbnails_reused: int
    unreadable: int


def _jobs(folder: Path, thumbs: Path, cards: list[Card]) -> list[Job]:
    return [
        (folder / picture.name, thumbs / picture.thumbnail)
        for card in cards
        for picture in card.pictures
        if picture.problem is None
    ]


def _prepare(
    folder: Path, manifest: Path, size: int
) -> tuple[list[Card], Totals, list[Job], list[Job]]:
    if not manifest.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            f"no batch manifest in {str(folder)!r} (a gallery shows a batch's output folder: "
            "run `nanogpt-async batch ... -o FOLDER` into it first)",
            str(manifest),
        )
    cards, totals = read_cards(folder, manifest, size)
    thumbs = folder / THUMBNAIL_DIR
    thumbs.mkdir(exist_ok=True)
    sweep(thumbs)
    jobs = _jobs(folder, thumbs, cards)
    return cards, totals, jobs, missing(jobs)


def _write_page(folder: Path, cards: list[Card], totals: Totals, unreadable: set[str]) -> Path:
    title = f"{folder.resolve().name or folder.resolve()} - nanogpt-async gallery"
    page = "".join(
        render_page(title, cards, totals, thumbnails=THUMBNAIL_DIR, unreadable=unreadable)
    )
    path = folder / PAGE_NAME
    write_atomic(path, page.encode("utf-8", "replace"))
    return path


async def build_gallery(
    output_dir: str | os.PathLike[str],
    *,
    manifest_name: str = "manifest.jsonl",
    thumbnail_size: int = 384,
) -> GalleryReport:
    """`write_gallery`, returning what it did (how many thumbnails it made)."""
    require_pillow()
    if not 16 <= thumbnail_size <= 2048:
        raise ValueError(f"thumbnail_size must be 16-2048 pixels, not {thumbnail_size!r}")
    folder = Path(output_dir)
    cards, totals, jobs, todo = await anyio.to_thread.run_sync(
        _prepare, folder, folder / manifest_name, thumbnail_size
    )
    failed = await make_thumbnails(todo, thumbnail_size)
    unreadable = {source.name for source in failed}
    page = await anyio.to_thread.run_sync(_write_page, folder, cards, totals, unreadable)
    return GalleryReport(
        page=page,
        totals=totals,
        thumbnails_made=len(todo) - len(failed),
        thumbnails_reused=len(jobs) - len(todo),
        unreadable=len(failed),
    )


async def write_gallery(
    output_dir: str | os.PathLike[str],
    *,
    manifest_name: str = "manifest.jsonl",
    thumbnail_size: int = 384,
) -> Path:
    """Write ``index.html`` into a batch's output folder: every image with its prompt and cost.

    The page is static and self-contained: open it from disk, no server, nothing loaded from
    the network. It shows a grid of thumbnails (loaded lazily) with each item's prompt, model,
    size, seed, cost and status; failed items with their error; a text filter, a status filter
    and sorting by cost or time; and the totals (items ok and failed, total cost) at the top.

    Thumbnails go to ``.thumbs/`` in the folder, made with Pillow (the ``gallery`` extra) a
    few at a time in worker threads. Only missing ones are made,
    so refreshing the gallery of a resumed batch costs only its new images. The manifest is
    read as the batch's resume reads it: a torn line is skipped, the latest line of an item
    wins, and the total cost counts every recorded charge.

    Args:
        output_dir: The batch's output folder (the one holding ``manifest.jsonl``).
        manifest_name: The manifest's file name, if the batch used another one.
        thumbnail_size: The longest side of a thumbnail, in pixels (16-2048).

    Returns:
        The path of the page, ``output_dir/index.html``.

    Raises:
        FileNotFoundError: There is no manifest in the folder.
        ImportError: Pillow is not installed.

    Example:
        ```python
        page = await nanogpt_async.write_gallery("out")
        print(f"open {page.resolve().as_uri()}")
        ```
    """
    report = await build_gallery(
        output_dir, manifest_name=manifest_name, thumbnail_size=thumbnail_size
    )
    return report.page
