"""How long importing nanogpt-async takes in a fresh interpreter (and the openai SDK, for scale)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

_RUNS = 5
#: ``import nanogpt_async`` is lazy; the client class is what an application really pays for.
STATEMENTS = (
    "import nanogpt_async",
    "from nanogpt_async import AsyncNanoGPT",
    "import openai",
)


def _wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    return time.perf_counter() - start


def measure(statements: tuple[str, ...] = STATEMENTS) -> dict[str, dict[str, float]]:
    """Median wall time over fresh interpreters, minus an empty interpreter's, per statement."""
    _wall("pass")  # warm the page cache
    empty = statistics.median(_wall("pass") for _ in range(_RUNS))
    out = {}
    for statement in statements:
        _wall(statement)
        walls = [_wall(statement) for _ in range(_RUNS)]
        out[statement] = {"wall_ms": (statistics.median(walls) - empty) * 1000}
    return out
