"""A pooled connection the server hung up on: a request that never left it is not charged.

aiohttp's pool (the asyncio path) hands a kept-alive connection out, and the request's bytes
are written in a task of their own afterwards. When the server's hang-up is processed between
the two, the transport is found closing before any byte was written: the request never left,
so it was not charged and is retried (before: "may have been charged", never retried, the item
lost). httpx's pool (trio) writes at once; a socket closed under it fails the write itself,
``WriteError``, which already counted as not sent.
"""

from __future__ import annotations

from typing import Any

import pytest

from nanogpt_async import APIConnectionError, AsyncNanoGPT
from nanogpt_async.testing import FakeServer

ASYNCIO_ONLY = pytest.mark.asyncio_only(
    reason="aiohttp's pool (asyncio) writes a request after handing the connection out; "
    "httpx's (trio) fails the write itself, already a not-sent WriteError"
)


def hang_up_after_the_pool_hands_out(client: AsyncNanoGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next pooled connection the client takes is closed right after the pool hands it out.

    As when the server's hang-up (its FIN) is read between the pool's handing out and the write.
    """
    session = client.channel.pools.api._transport._aiohttp.session  # type: ignore[attr-defined]
    connector = session.connector
    real_connect = connector.connect

    async def connect_then_lose(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(connector, "connect", real_connect)  # once
        connection = await real_connect(*args, **kwargs)
        connection.transport.close()
        return connection

    monkeypatch.setattr(connector, "connect", connect_then_lose)


@ASYNCIO_ONLY
async def test_a_request_on_a_connection_found_closed_before_writing_is_retried_and_paid_once(
    fake_nanogpt: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncNanoGPT(api_key=fake_nanogpt.api_key, base_url=fake_nanogpt.base_url) as client:
        await client.images.generate(prompt="first")  # leaves its connection in the pool
        hang_up_after_the_pool_hands_out(client, monkeypatch)

        response = await client.images.generate(prompt="second")

    assert len(response.data) == 1
    assert fake_nanogpt.fake.stats.generations == 2  # charged == received: nothing lost


@ASYNCIO_ONLY
async def test_a_request_on_a_connection_found_closed_before_writing_says_nothing_was_charged(
    fake_nanogpt: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncNanoGPT(
        api_key=fake_nanogpt.api_key, base_url=fake_nanogpt.base_url, max_retries=0
    ) as client:
        await client.images.generate(prompt="first")
        hang_up_after_the_pool_hands_out(client, monkeypatch)

        with pytest.raises(APIConnectionError, match="nothing was charged") as info:
            await client.images.generate(prompt="second")

    assert info.value.request_sent is False
    assert "found closed before any byte" in str(info.value)
    assert fake_nanogpt.fake.stats.generations == 1
