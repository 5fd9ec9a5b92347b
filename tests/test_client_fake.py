"""The client on its real transport against the fake NanoGPT on loopback."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest

from nanogpt_async import (
    APIConnectionError,
    AsyncNanoGPT,
    AuthenticationError,
    ImageURLExpiredError,
    InternalServerError,
    RateLimitError,
)
from nanogpt_async._http._transport import tls_context
from nanogpt_async._sniff import sniff_image
from nanogpt_async.testing import FakeServer, Fault, ManualClock

KEY = "ngk_fake_server_key_777"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


# The project's own pytest plugin serves the fake (fixture `fake_nanogpt`) with this key.
pytestmark = pytest.mark.fake_nanogpt(api_key=KEY)


@pytest.fixture
def server(fake_nanogpt: FakeServer, clock: ManualClock) -> FakeServer:
    # The clock is read on every use, so a test can drive URL expiry without sleeping.
    fake_nanogpt.fake.clock = clock
    return fake_nanogpt


async def test_generate_and_read_b64_end_to_end_on_the_backends_transport(
    fake_client, server, anyio_backend
):
    response = await fake_client.images.generate(prompt="a red fox", n=3)

    images = [await image.read() for image in response.data]
    assert all(sniff_image(data) is not None for data in images)
    assert len(set(images)) == 3  # three distinct pictures
    assert response.cost == pytest.approx(3 * server.fake.price_per_image)
    assert response.request_id
    # aiohttp's pool under asyncio; under trio, where aiohttp cannot run, httpx's own.
    assert (
        fake_client.channel.pools.api._transport.kind
        == {"asyncio": "aiohttp", "trio": "httpx"}[anyio_backend]
    )


async def test_signed_urls_are_downloaded_without_credentials(fake_client, server):
    response = await fake_client.images.generate(prompt="a fox", n=2, response_format="url")

    assert all(image.url for image in response.data)
    assert all(sniff_image(data) for data in [await image.read() for image in response.data])
    assert server.fake.stats.downloads == 2
    assert server.fake.stats.download_requests_with_credentials == 0


async def test_url_fallback_to_b64_items_read_the_same(fake_client, server):
    server.fake.url_fallback_rate = 1.0

    response = await fake_client.images.generate(prompt="a fox", response_format="url")

    assert response.data[0].b64_json is not None
    assert sniff_image(await response.data[0].read())


async def test_a_url_read_after_expiry_raises_expired(fake_client, server, clock):
    response = await fake_client.images.generate(prompt="a fox", response_format="url")
    clock.advance(server.fake.url_ttl + 1)

    with pytest.raises(ImageURLExpiredError, match="expired"):
        await response.data[0].read()


async def test_a_download_redirect_to_another_host_carries_no_key(fake_client, server):
    response = await fake_client.images.generate(prompt="a fox", response_format="url")
    server.fake.enqueue(Fault.redirect_to_api_host(), route="download")

    with pytest.raises(Exception):  # noqa: B017, PT011 - /capture answers no image: any failure
        await response.data[0].read()

    assert server.fake.stats.captured_headers
    for headers in server.fake.stats.captured_headers:
        assert "authorization" not in {k.lower() for k in headers}
        assert KEY not in str(headers)


async def test_a_reset_after_charging_is_reported_not_retried_so_nothing_is_paid_twice(
    fake_client, server
):
    server.fake.enqueue(Fault.reset_after_charge())

    with pytest.raises(APIConnectionError, match="may have been charged") as info:
        await fake_client.images.generate(prompt="only once")

    assert info.value.request_sent is True
    assert server.fake.stats.generations_by_prompt["only once"] == 1
    assert server.fake.stats.generation_requests == 1


async def test_server_errors_are_retried_on_the_real_transport(fake_client, server):
    server.fake.enqueue(Fault.status(503), count=2)

    response = await fake_client.images.generate(prompt="eventually")

    assert len(response.data) == 1
    assert server.fake.stats.generation_requests == 3
    assert server.fake.stats.generations_by_prompt["eventually"] == 1


async def test_a_rate_limit_answer_is_waited_out_and_retried(fake_client, server, instant_backoff):
    server.fake.enqueue(Fault.rate_limited(retry_after="2"))

    await fake_client.images.generate(prompt="patient")

    assert 2.0 <= instant_backoff[0] <= 2.3
    assert server.fake.stats.rate_limited == 1


async def test_persistent_5xx_beyond_the_retry_budget_raises(fake_client, server):
    server.fake.error_rate = 1.0

    with pytest.raises(InternalServerError):
        await fake_client.images.generate(prompt="never")

    assert server.fake.stats.generation_requests == fake_client.retry_policy.max_retries + 1
    assert server.fake.stats.generations == 0


async def test_a_wrong_key_is_an_authentication_error(server):
    async with AsyncNanoGPT(api_key="wrong-key", base_url=server.base_url) as client:
        with pytest.raises(AuthenticationError):
            await client.images.generate(prompt="x")


async def test_the_v1_base_path_works_too(server):
    async with AsyncNanoGPT(api_key=KEY, base_url=server.v1_base_url) as client:
        response = await client.images.generate(prompt="x")

    assert response.data


async def test_models_and_balance_against_the_fake(fake_client):
    models = await fake_client.images.models()
    balance = await fake_client.balance()

    assert "hidream" in {model.id for model in models}
    assert balance.usd_balance is not None


async def test_connection_refused_is_retried_then_reported_as_not_sent():
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncNanoGPT(api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1") as client:
        with pytest.raises(APIConnectionError, match="nothing was charged") as info:
            await client.images.generate(prompt="x")

    assert info.value.request_sent is False


async def test_the_daily_cap_from_the_fake_is_not_retried(fake_client, server):
    server.fake.enqueue(Fault.daily_cap("usd"))

    with pytest.raises(RateLimitError, match="daily cap resets"):
        await fake_client.images.generate(prompt="x")

    assert server.fake.stats.generation_requests == 1


async def test_clients_share_one_tls_context_instead_of_loading_the_ca_bundle_each(
    server, monkeypatch
):
    # Loading the CA bundle is 23 ms of CPU; it used to happen for every client's pool.
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(context)
        load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    for _ in range(3):
        async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
            response = await client.images.generate(prompt="a fox", response_format="url")
            await response.data[0].read()  # the download pool too

    assert len(loads) <= 1  # none if an earlier test in this process built it already


def test_the_shared_tls_context_follows_the_setting_and_the_environments_bundle(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    verified = tls_context(verify=True, trust_env=True)
    assert tls_context(verify=True, trust_env=True) is verified
    assert verified.verify_mode == ssl.CERT_REQUIRED
    unverified = tls_context(verify=False, trust_env=True)
    assert unverified.verify_mode == ssl.CERT_NONE

    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(certifi.where()).read_text("ascii"), "ascii")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    from_env = tls_context(verify=True, trust_env=True)
    assert from_env is not verified
    assert tls_context(verify=True, trust_env=False) is not from_env  # the environment unread
    os.utime(bundle, ns=(1, 1))  # the bundle changed: read again
    assert tls_context(verify=True, trust_env=True) is not from_env
    own = ssl.create_default_context()
    assert tls_context(verify=own, trust_env=True) is own


@pytest.mark.asyncio_only(reason="the path below httpx is aiohttp's, which needs asyncio")
async def test_the_clients_own_pool_sends_api_calls_below_httpx_s_client(
    fake_client, server, monkeypatch
):
    # httpx's request/response objects and client layers were a fifth of a generation's CPU at
    # fan-out (benchmark W2); the client's own pool has nothing in them it needs.
    sent_through_httpx: list[object] = []
    real_send = httpx.AsyncClient.send

    async def counting(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        sent_through_httpx.append(request.url)
        return await real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting)

    response = await fake_client.images.generate(prompt="a red fox", n=2)

    assert len([await image.read() for image in response.data]) == 2
    assert response.request_id
    assert sent_through_httpx == []
    assert server.fake.stats.generations == 1


async def test_response_hooks_on_the_clients_pool_still_see_every_answer(fake_client, server):
    # Hooks live in httpx's client layers: a pool with hooks keeps sending through them.
    statuses: list[int] = []

    async def hook(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    fake_client.channel.pools.api.event_hooks = {"request": [], "response": [hook]}

    await fake_client.images.generate(prompt="a red fox")
    await fake_client.images.generate(prompt="a grey fox")

    assert statuses == [200, 200]
