"""Start-up without the cycle collector: imports build objects that are never garbage.

Importing the command line and a batch's modules (click, httpx, anyio, aiohttp, the package)
allocates a few hundred thousand objects, so Python's cycle collector runs about 100 times
during start-up, each time walking the young objects (and now and then everything) to find
garbage that imports do not make. A one-prompt ``batch`` spent 0.1 s of its CPU in those
collections (this machine, load 3; `gc.callbacks` timing), and the collections of the run
that follows kept walking the start-up objects too. So the CLI imports with the collector
paused, then freezes what exists (`gc.freeze`: out of every later collection's reach) and
resumes it.

The run is collected less often than Python's default, every 10,000 net new objects instead
of 700 (`collect_less_often`): a batch keeps hundreds of items in flight, so each young
collection found them all still alive and moved them on to the older generation, to be
walked again there; 1,024 items at concurrency 256 (benchmark W10) went through about 250
collections, 0.14 s of CPU, against about 6 and 0.005 s this way. Cyclic garbage is still
collected, only later: the peak RSS of 200 items of 2 x 3 MB images at concurrency 64 was
the same (220-250 MB either way, this machine).
"""

from __future__ import annotations

import gc
import importlib
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["YOUNG_THRESHOLD", "collect_less_often", "collector_paused", "import_batch_stack"]

#: Net new objects between two young-generation collections in the CLI's process (Python: 700).
YOUNG_THRESHOLD = 10_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block (imports) with the cycle collector off, then freeze what it built.

    Nests: only the outermost block turns the collector back on (if it was on).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_batch_stack() -> None:
    """Import now what a ``batch`` run imports anyway, for a command that sends requests.

    aiohttp (the client imports it at its first request, `_http._transport`), the batch
    runner and its stages (`AsyncNanoGPT.images.generate_many` imports them lazily), and
    anyio's asyncio backend (imported by ``anyio.run``). Imported later, inside the run, their
    classes and functions (aiohttp alone has 1,500-odd) were built with the collector on,
    then walked by its collections; imported here, inside `collector_paused`, they are built
    without collections and frozen with the rest.
    """
    for name in _BATCH_STACK:
        importlib.import_module(name)


#: What `import_batch_stack` imports (the anyio backend is the one ``anyio.run`` loads).
_BATCH_STACK = ("aiohttp", "anyio._backends._asyncio", "nanogpt_async._batch._runner")


def collect_less_often() -> None:
    """Raise the young generation's threshold to `YOUNG_THRESHOLD` (never lower it)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
