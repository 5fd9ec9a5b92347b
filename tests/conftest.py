"""Shared fixtures: a respx-mocked client, a PNG, instant retry backoff and fsync everywhere."""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import respx

from nanogpt_async import AsyncNanoGPT
from nanogpt_async._http._retry import recorded_backoff
from nanogpt_async.testing import FakeServer, make_png
from tests._bytecode import write_bytecode

#: A distinctive key so tests can prove it never leaks anywhere.
KEY = "ngk_SECRET_do_not_leak_4242"
BASE = "https://api.nanogpt.test/api/v1"


#: What a leaked key looks like in any test: the keys tests use, or any bearer credential.
_SECRET = re.compile(r"ngk_[A-Za-z0-9_]+|Bearer\s+\S+|test-key")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.messages.append(text)


def pytest_configure(config: pytest.Config) -> None:
    """Every logger logs at every level, for the key-leak check below; and bytecode written.

    Set once, before pytest's log capture starts: pytest (``log_level = "INFO"`` in pyproject,
    for its own handlers) sets the root logger to the lower of its level and the one it found
    as each phase of a test begins, and puts back the one it found as the phase ends, which
    would undo a DEBUG set by a fixture (in the setup phase) before the test itself ran.

    Before any worker or test starts, the first process (xdist's controller, or the only one
    with ``-n 0``) writes the checkout's bytecode for every process to read: ~60 child
    processes and each xdist worker compiled the package from source where bytecode is not
    written (`tests._bytecode`). 5 ms when every file is current.
    """
    logging.getLogger().setLevel(logging.DEBUG)
    if not hasattr(config, "workerinput"):
        write_bytecode(Path(__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def no_key_in_logs() -> Iterator[None]:
    """Across the whole suite, nothing logged at any level may contain an API key."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    leaks = [m for m in handler.messages if _SECRET.search(m)]
    assert not leaks, f"an API key was logged: {leaks[:3]}"


@pytest.fixture(autouse=True)
def instant_backoff() -> Iterator[list[float]]:
    """Every test runs retries without waiting; the waits are recorded for assertions."""
    with recorded_backoff() as waits:
        yield waits


@pytest.fixture(autouse=True)
def fsync_without_the_disk_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.fsync`` checks its descriptor but does not wait for the disk, in this process only.

    The library's code calls ``os.fsync`` exactly as in production (a test that counts or fails
    fsyncs patches over this one); only the flush itself is skipped, which nothing in a
    process that is not killed can observe: 3.5 ms each on this machine's ext4, ~1,900 per run.
    Durability is tested where it shows, by killing real subprocesses (test_crash_consistency),
    which fsync for real.
    """

    def fsync(fd: int) -> None:
        os.fstat(fd)  # a closed or bad descriptor still raises, as it would

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture
def png() -> bytes:
    return make_png("fixture")


@pytest.fixture
def png_b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


@pytest.fixture
def mock_api() -> Iterator[respx.MockRouter]:
    # using="httpx" mocks at the client level, so it works whatever transport sits below.
    with respx.mock(using="httpx", assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(mock_api: respx.MockRouter) -> AsyncIterator[AsyncNanoGPT]:
    """A client whose requests go to respx's `mock_api` (request and response details)."""
    async with AsyncNanoGPT(api_key=KEY, base_url=BASE) as c:
        yield c


@pytest.fixture
async def fake_client(fake_nanogpt: FakeServer) -> AsyncIterator[AsyncNanoGPT]:
    """A client on its real transport, talking to the `fake_nanogpt` server on loopback."""
    async with AsyncNanoGPT(api_key=fake_nanogpt.api_key, base_url=fake_nanogpt.base_url) as c:
        yield c


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs once per backend: asyncio, then trio.

    anyio's plugin (``anyio_mode = "auto"`` in pyproject) gives every ``async def`` test this
    fixture. Named here rather than left to anyio's default (the backends that happen to be
    importable) so that a missing trio fails the suite instead of halving it. Under trio the
    client sends through httpx's own pool (not aiohttp) and Redis pacing falls back to the
    process (redis.asyncio needs asyncio): a test whose subject exists only under asyncio says
    so with ``@pytest.mark.asyncio_only(reason=...)``.
    """
    return str(request.param)


@pytest.hookimpl(tryfirst=True)  # before pytest parametrizes the fixture above
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """An ``asyncio_only`` test runs under asyncio alone; it must say why."""
    only = metafunc.definition.get_closest_marker("asyncio_only")
    if only is None or "anyio_backend" not in metafunc.fixturenames:
        return
    if not only.kwargs.get("reason"):
        pytest.fail(f"{metafunc.definition.nodeid}: asyncio_only needs a reason=", pytrace=False)
    metafunc.definition.add_marker(pytest.mark.parametrize("anyio_backend", ["asyncio"]))
