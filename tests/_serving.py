"""Fake servers and clients for one test file's key: one home for what five files repeated."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx

from nanogpt_async import AsyncNanoGPT
from nanogpt_async._http._transport import AutoTransport
from nanogpt_async._pacing import Pacer
from nanogpt_async.testing import FakeNanoGPT, FakeServer
from tests._pacing_time import SettledTime

#: For plain-http httpx clients of the fake: httpx builds a TLS context per client otherwise,
#: loading the whole CA bundle (23 ms of CPU) for a connection that never uses it.
TLS = ssl.create_default_context()

#: Seconds after which a client on virtual time is deemed stuck (`settled_client`).
STUCK = 30.0

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


@contextlib.asynccontextmanager
async def settled_client(
    server: FakeServer, key: str, time: SettledTime, **options: Any
) -> AsyncIterator[AsyncNanoGPT]:
    """A client of ``server`` (started with ``clock=time``) pacing on ``time`` too.

    Its requests go through a pool of its own (`SettledTime.transport` counts them in flight),
    aiohttp's under asyncio as the client's own; its pacer, and a batch's pacer of its own
    (``rps=``), wait on ``time``, which moves while the client is in the ``async with``.
    """
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    transport = time.transport(AutoTransport(limits=limits, verify=TLS))
    async with (
        httpx.AsyncClient(transport=transport) as http,
        AsyncNanoGPT(api_key=key, base_url=server.base_url, http_client=http, **options) as client,
        anyio.create_task_group() as group,
    ):
        pacer = client.channel.pacer
        client.channel.pacer = Pacer(
            rps=pacer.max_rate,
            burst=pacer.burst,
            max_wait=pacer.max_wait,
            clock=time,
            sleep=time.sleep,
        )
        group.start_soon(time.drive)
        try:
            # A net, not a measure: on virtual time these tests take under a second of CPU.
            with anyio.fail_after(STUCK):
                yield client
        except TimeoutError:
            raise AssertionError(
                f"virtual time stood still for {STUCK:g} s: something waits on real time (a "
                "pacer not on `time`?) while the fake's bucket is on virtual time"
            ) from None
        group.cancel_scope.cancel()


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
