"""A fake NanoGPT server for tests and benchmarks, on loopback.

Example:
    >>> from nanogpt_async.testing import FakeNanoGPT, Fault
    >>> fake = FakeNanoGPT(latency=0.0)
    >>> fake.enqueue(Fault.status(503, retry_after="1"))
    >>> with fake.run_in_thread() as server:  # doctest: +SKIP
    ...     httpx.post(f"{server.base_url}/images/generations", ...)

Run it as a process with ``python -m nanogpt_async.testing --port 0``; in pytest use the
``fake_nanogpt`` fixture (registered automatically as a plugin).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanogpt_async._http._retry import recorded_backoff as instant_retries
    from nanogpt_async.testing._fake import FakeNanoGPT
    from nanogpt_async.testing._faults import Fault
    from nanogpt_async.testing._png import make_png
    from nanogpt_async.testing._server import FakeServer, run_forever, start_process
    from nanogpt_async.testing._state import FakeStats, ManualClock

__all__ = [
    "FakeNanoGPT",
    "FakeServer",
    "FakeStats",
    "Fault",
    "ManualClock",
    "instant_retries",
    "make_png",
    "run_forever",
    "start_process",
]

# Loaded on first use: the pytest plugin lives in this package and is imported in every
# test session, which must not pay for aiohttp unless a fixture actually runs.
_HOME = {
    "FakeNanoGPT": "_fake",
    "FakeStats": "_state",
    "ManualClock": "_state",
    "Fault": "_faults",
    "make_png": "_png",
    "FakeServer": "_server",
    "run_forever": "_server",
    "start_process": "_server",
}


def __getattr__(name: str) -> Any:
    if name == "instant_retries":
        # The retry engine's own testing switch, re-exported where test helpers live.
        from nanogpt_async._http._retry import recorded_backoff

        globals()[name] = recorded_backoff
        return recorded_backoff
    try:
        home = _HOME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    # Users see nanogpt_async.testing.X in reprs and docs, not the private module.
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
