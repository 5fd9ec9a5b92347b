"""The CLI's side of the gallery: one line about what was written, errors as one line."""

from __future__ import annotations

import os
from pathlib import Path

from nanogpt_async._cli._common import output
from nanogpt_async._gallery import GalleryReport, build_gallery

__all__ = ["describe", "refresh_gallery"]


def describe(report: GalleryReport) -> str:
    """``gallery: out/index.html (100 items, 98 ok, 2 failed; 3 new thumbnails)``."""
    totals = report.totals
    line = (
        f"gallery: {report.page} ({totals.items} items, {totals.ok} ok, {totals.failed} failed; "
        f"{report.thumbnails_made} new thumbnail(s)"
    )
    if report.unreadable:
        line += f", {report.unreadable} image(s) without a preview"
    return line + ")"


async def refresh_gallery(
    out: Path, *, quiet: bool = False, manifest_name: str = "manifest.jsonl"
) -> None:
    """Write or refresh ``out/index.html`` after a batch; a problem is a warning, not a failure.

    The batch's images and manifest are what was paid for: a gallery that cannot be written
    (no Pillow, a full disk) must not change the batch's exit code. ``quiet`` (``--progress
    none``) keeps the line saying where the page is; problems are still reported.
    """
    try:
        report = await build_gallery(out, manifest_name=manifest_name)
    except ImportError as exc:
        output.err(f"note: no gallery written: {exc} (or pass --no-gallery)")
    except FileNotFoundError:
        return  # nothing was recorded (the batch stopped before its first item)
    except OSError as exc:
        output.err(
            f"warning: could not write the gallery in {out}{os.sep}: {exc}; the images and "
            "manifest are fine, run `nanogpt-async gallery` on the folder to retry"
        )
    else:
        if not quiet:
            output.err(describe(report))
