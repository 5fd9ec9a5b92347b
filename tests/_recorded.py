"""Output folders as a finished run leaves them: files written and their manifest lines."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nanogpt_async._batch._manifest import FileEntry, ManifestWriter


def entry(folder: Path, name: str, data: bytes, *, stamped: bool = True) -> dict[str, Any]:
    """Write ``data`` to ``folder/name``; its manifest entry (stamped unless told not to)."""
    path = folder / name
    path.write_bytes(data)
    info = path.lstat()
    stamp = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns) if stamped else None
    return FileEntry(name, hashlib.sha256(data).hexdigest(), len(data), stamp).as_json()


def record(writer: ManifestWriter, item_id: str, status: str, files: list[Any]) -> None:
    """One manifest line for ``item_id``."""
    writer.append({"id": item_id, "status": status, "files": files, "request_id": f"r-{item_id}"})


def recorded_items(
    folder: Path, count: int, *, ids: str = "item-{}", prompts: str = "recorded {}"
) -> list[dict[str, str]]:
    """``count`` items recorded ok with their files; the items, as the input gave them."""
    writer = ManifestWriter(folder / "manifest.jsonl")
    items = []
    for i in range(count):
        item = {"id": ids.format(i), "prompt": prompts.format(i)}
        record(
            writer, item["id"], "ok", [entry(folder, f"{item['id']}.png", f"image {i}".encode())]
        )
        items.append(item)
    writer.close()
    return items
