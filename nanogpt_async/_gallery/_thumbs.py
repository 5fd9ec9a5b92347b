"""Thumbnails with Pillow: made once, a few at a time in worker threads, at most one image each.

A thumbnail's name is derived from its image's recorded name, SHA-256 and size, so a re-run
makes only the missing ones, and a regenerated image gets a fresh one.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from nanogpt_async._output._files import TEMP_SUFFIX

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["THUMBNAIL_DIR", "Job", "make_thumbnails", "missing", "require_pillow"]

#: The thumbnails' sub-folder of the output folder.
THUMBNAIL_DIR = ".thumbs"

#: Images decoded at once. Each worker holds one decoded image (a 4096x4096 RGBA PNG is 64 MB),
#: so this bounds memory; Pillow releases the GIL while decoding and resizing, so two cores
#: already keep busy with a few.
_WORKERS = max(1, min(4, os.cpu_count() or 1))

#: (the image, where its thumbnail goes)
Job = tuple[Path, Path]


def require_pillow() -> None:
    """Raise a clear ``ImportError`` if Pillow is not installed."""
    try:
        import PIL.Image  # noqa: F401 - only checking it is there
    except ImportError as exc:
        raise ImportError(
            "the gallery needs Pillow to make thumbnails: install nanogpt-async with its "
            "[gallery] or [cli] extra, or pip install 'pillow>=10'",
            name="PIL",
        ) from exc


def missing(jobs: Sequence[Job]) -> list[Job]:
    """The jobs whose thumbnail does not exist yet (or is empty, from a crash). Blocking."""
    todo = []
    for job in jobs:
        try:
            if job[1].stat().st_size > 0:
                continue
        except OSError:
            pass
        todo.append(job)
    return todo


def _flatten(image: Image) -> Image:
    """RGB, transparent parts on white (JPEG has no alpha)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def thumbnail_bytes(source: Path, size: int) -> bytes:
    """A JPEG of ``source`` fitting in ``size`` x ``size`` pixels. Blocking.

    Raises:
        OSError: the file cannot be read or is not an image Pillow knows.
        ValueError: the image is too large to decode safely (a decompression bomb).
    """
    from PIL import Image

    try:
        with Image.open(source) as image:
            # JPEG decodes straight at 1/2..1/8 scale: less memory and time for big photos.
            image.draft("RGB", (size, size))
            image.thumbnail((size, size), reducing_gap=2.0)
            small = _flatten(image)
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from exc
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=82, optimize=True)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    # Renamed into place, so a crash never leaves half a thumbnail under the real name. No
    # fsync: a thumbnail can always be made again, and 10,000 fsyncs would cost minutes.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _make_one(job: Job, size: int) -> bool:
    source, target = job
    try:
        data = thumbnail_bytes(source, size)
    except Exception:
        # Pillow's decoders raise many types on odd input (OSError, ValueError, SyntaxError,
        # EOFError, struct.error...): one bad file costs its preview, never the whole page.
        return False
    _write(target, data)
    return True


def sweep(folder: Path) -> None:
    """Delete temp files an interrupted run left in the thumbnail folder. Blocking."""
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()


async def make_thumbnails(jobs: Sequence[Job], size: int) -> set[Path]:
    """Make every job's thumbnail, ``_WORKERS`` at a time off the event loop.

    Returns the sources that could not be read as images.
    """
    failed: set[Path] = set()
    pending: Iterator[Job] = iter(jobs)

    async def worker() -> None:
        for job in pending:  # shared: each job goes to exactly one worker
            if not await anyio.to_thread.run_sync(_make_one, job, size):
                failed.add(job[0])

    async with anyio.create_task_group() as group:
        for _ in range(min(_WORKERS, len(jobs))):
            group.start_soon(worker)
    return failed
