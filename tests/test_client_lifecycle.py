"""The client's lifecycle (an enum, as httpx's) and the version it announces."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import httpx
import respx
from click.testing import CliRunner

import nanogpt_async
from nanogpt_async import AsyncNanoGPT
from nanogpt_async._cli._commands import cli
from nanogpt_async._client import ClientState
from tests.conftest import BASE, KEY

VERSION = importlib.metadata.version("nanogpt-async")


def _state(client: AsyncNanoGPT) -> ClientState:
    return client.state  # read through a call: each await may change it


async def test_a_client_goes_from_unopened_to_opened_to_closed() -> None:
    client = AsyncNanoGPT(api_key=KEY, base_url=BASE)
    assert _state(client) is ClientState.UNOPENED

    async with client:
        assert _state(client) is ClientState.OPENED

    assert _state(client) is ClientState.CLOSED
    assert client.channel.pools.api.is_closed


async def test_closing_twice_closes_the_pools_once() -> None:
    client = AsyncNanoGPT(api_key=KEY, base_url=BASE)
    closed: list[str] = []
    client._closers = (*client._closers, lambda: _record(closed))

    await client.aclose()
    await client.aclose()

    assert closed == ["closed"]


async def _record(closed: list[str]) -> None:
    closed.append("closed")


async def test_a_view_closes_nothing_and_shares_the_pools_and_the_pacer() -> None:
    async with AsyncNanoGPT(api_key=KEY, base_url=BASE) as client:
        view = client.with_options(timeout=5)
        await view.aclose()

        assert view.state is ClientState.CLOSED
        assert not client.channel.pools.api.is_closed
        assert view.channel.pools is client.channel.pools
        assert view.channel.pacer is client.channel.pacer
        assert view.timeout == httpx.Timeout(5)
        assert client.timeout != view.timeout


def test_the_version_is_the_installed_distributions() -> None:
    assert nanogpt_async.__version__ == VERSION


def test_the_cli_prints_the_installed_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])

    assert result.exit_code == 0
    assert VERSION in result.output


async def test_every_call_announces_the_installed_version(
    client: AsyncNanoGPT, mock_api: respx.MockRouter
) -> None:
    route = mock_api.get(f"{BASE}/image-models").respond(json={"data": []})

    await client.images.models()

    assert route.calls.last.request.headers["User-Agent"] == f"nanogpt-async/{VERSION}"


def test_reading_the_version_does_not_import_importlib_metadata() -> None:
    # importlib.metadata is 50 ms of CPU at every CLI start (benchmark W10); the installed
    # dist-info folder is read directly, with the same answer (the tests above).
    code = (
        "import sys; from nanogpt_async._version import package_version; "
        "print(package_version(), 'importlib.metadata' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    assert out == [VERSION, "False"]
