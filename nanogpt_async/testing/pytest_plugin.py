"""Pytest fixtures for the fake NanoGPT server (registered as the ``nanogpt_async`` plugin).

Importing this module stays cheap: the server and aiohttp load only when a fixture runs.

Example:
    >>> def test_generate(fake_nanogpt):  # doctest: +SKIP
    ...     fake_nanogpt.fake.error_rate = 0.5
    ...     client = AsyncNanoGPT(api_key=fake_nanogpt.api_key, base_url=fake_nanogpt.base_url)

Constructor-only settings come from a marker:
``@pytest.mark.fake_nanogpt(keepalive_timeout=0.1, image_bytes=2_000_000)``.

The fixtures are synchronous; pytest alone does not run ``async def`` tests. Mark them for
anyio's pytest plugin (anyio is a dependency, so it is always there) with
``pytestmark = pytest.mark.anyio`` in the test module, or use pytest-asyncio if the suite
already does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nanogpt_async.testing import FakeServer

__all__ = ["fake_nanogpt", "fake_nanogpt_env", "pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_nanogpt`` marker (the suite may run with --strict-markers)."""
    config.addinivalue_line(
        "markers",
        "fake_nanogpt(**knobs): FakeNanoGPT constructor arguments for the fake_nanogpt fixture",
    )


@pytest.fixture
def fake_nanogpt(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """A fresh fake NanoGPT server per test, running on a background thread.

    Knobs can be changed through ``fake_nanogpt.fake`` while the test runs; constructor
    arguments come from ``@pytest.mark.fake_nanogpt(...)``.
    """
    # Imported here so that merely having the plugin installed costs nothing.
    from nanogpt_async.testing import FakeNanoGPT

    marker = request.node.get_closest_marker("fake_nanogpt")
    knobs = dict(marker.kwargs) if marker is not None else {}
    with FakeNanoGPT(**knobs).run_in_thread() as server:
        yield server


@pytest.fixture
def fake_nanogpt_env(fake_nanogpt: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Like `fake_nanogpt`, and sets ``NANOGPT_API_KEY``/``NANOGPT_BASE_URL`` to it."""
    monkeypatch.setenv("NANOGPT_API_KEY", fake_nanogpt.api_key)
    monkeypatch.setenv("NANOGPT_BASE_URL", fake_nanogpt.base_url)
    return fake_nanogpt
