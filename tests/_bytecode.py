"""Bytecode of this checkout's modules, written once for every process the suite starts.

Where bytecode is not written (``PYTHONDONTWRITEBYTECODE``, as on this machine and many CI
images), every child process the suite starts (about 60 import the package: CLI runs, shard
workers, fake servers, benchmark workers) and every xdist worker compiled the modules it
imports from source, each time: 0.07-0.1 s of CPU per CLI process. The flag only stops
writing; a current ``__pycache__`` file is still read. So the session's first process writes
them, the same files Python itself writes when the flag is not set (timestamp ``.pyc``, checked
against the source's mtime and size on every import), and the rest read them.
"""

from __future__ import annotations

import importlib.util
import py_compile
import struct
from pathlib import Path

#: What child processes and workers import from the checkout (``PYTHONPATH`` points at it).
PACKAGES = ("nanogpt_async", "benchmarks", "tests")


def _pytest_compiles(source: Path) -> bool:
    """Test modules and conftests: pytest compiles them itself, with their asserts rewritten."""
    return source.name.startswith("test_") or source.name == "conftest.py"


def _is_current(source: Path, cached: Path) -> bool:
    """Whether ``cached`` is the timestamp ``.pyc`` the importer would accept for ``source``."""
    try:
        with cached.open("rb") as file:
            header = file.read(16)
        stat = source.stat()
    except OSError:
        return False
    expected = importlib.util.MAGIC_NUMBER + struct.pack(
        "<III", 0, int(stat.st_mtime) & 0xFFFF_FFFF, stat.st_size & 0xFFFF_FFFF
    )
    return header == expected


def write_bytecode(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Write the missing or stale ``.pyc`` of ``packages`` under ``root``; the sources written.

    A module that does not compile is left alone: importing it reports the error as usual.
    """
    written = []
    for package in packages:
        for source in sorted((root / package).rglob("*.py")):
            if _pytest_compiles(source):
                continue
            cached = Path(importlib.util.cache_from_source(str(source)))
            if _is_current(source, cached):
                continue
            try:
                py_compile.compile(
                    str(source),
                    cfile=str(cached),
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
                )
            except (py_compile.PyCompileError, OSError):
                continue
            written.append(source)
    return written
