"""Fake servers and clients for one test file's key: one home for what five files repeated."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from nanogpt_async import AsyncNanoGPT
from nanogpt_async.testing import FakeNanoGPT, FakeServer

#: For plain-http httpx clients of the fake: httpx builds a TLS context per client otherwise,
#: loading the whole CA bundle (23 ms of CPU) for a connection that never uses it.
TLS = ssl.create_default_context()

#: Starts a fake server with the given knobs (``FakeNanoGPT`` keyword arguments).
Serve = Callable[..., FakeServer]


@contextlib.contextmanager
def fake_servers(key: str) -> Iterator[Serve]:
    """A starter of fake servers accepting ``key``; every one started is stopped on exit."""
    with contextlib.ExitStack() as stack:

        def start(**knobs: Any) -> FakeServer:
            return stack.enter_context(FakeNanoGPT(api_key=key, **knobs).run_in_thread())

        yield start


@contextlib.asynccontextmanager
async def fake_client(server: FakeServer, key: str, **options: Any) -> AsyncIterator[AsyncNanoGPT]:
    """A client of ``server`` with ``key``, closed on exit."""
    async with AsyncNanoGPT(api_key=key, base_url=server.base_url, **options) as client:
        yield client


def run_python(
    args: list[str],
    server: FakeServer | None = None,
    key: str | None = None,
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a child importing this checkout, pointed at ``server`` with ``key``.

    With ``check``, a non-zero exit fails (``CalledProcessError``); output is captured as text.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if server is not None:
        env["NANOGPT_BASE_URL"] = server.base_url
    if key is not None:
        env["NANOGPT_API_KEY"] = key
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )
