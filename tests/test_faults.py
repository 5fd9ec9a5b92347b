"""Faults on the wire, on the real transport, against the fake server: each has one behaviour.

docs/reliability.md maps every fault to the test here that proves its behaviour.
"""

from __future__ import annotations

import anyio
import pytest

from nanogpt_async import (
    APIConnectionError,
    APIResponseValidationError,
    AsyncNanoGPT,
    GatewayError,
    ImageDownloadError,
    InternalServerError,
    InvalidImageError,
    RetryPolicy,
)
from nanogpt_async._sniff import sniff_image
from nanogpt_async.testing import Fault

KEY = "ngk_faults_key_31337"


# The project's own pytest plugin serves the fake (fixture `fake_nanogpt`) with this key.
pytestmark = pytest.mark.fake_nanogpt(api_key=KEY)


async def test_body_shorter_than_content_length_is_a_connection_error_not_retried(
    fake_client, fake_nanogpt
):
    fake_nanogpt.fake.enqueue(Fault.short_body())

    with pytest.raises(APIConnectionError, match="may have been charged") as info:
        await fake_client.images.generate(prompt="short")

    assert info.value.request_sent
    assert fake_nanogpt.fake.stats.generation_requests == 1


async def test_reset_before_any_response_is_reported_as_possibly_sent(fake_client, fake_nanogpt):
    # The server closed without answering: from the fake_client's side it cannot know whether the
    # request was processed, so it is treated as possibly charged (and not retried).
    fake_nanogpt.fake.enqueue(Fault.reset_before_response())

    with pytest.raises(APIConnectionError) as info:
        await fake_client.images.generate(prompt="reset")

    assert info.value.request_sent
    assert fake_nanogpt.fake.stats.generations == 0


async def test_reset_before_response_is_retried_when_ambiguous_retries_are_allowed(fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.reset_before_response())
    policy = RetryPolicy(retry_ambiguous=True)

    async with AsyncNanoGPT(
        api_key=KEY, base_url=fake_nanogpt.base_url, retry_policy=policy
    ) as client:
        response = await client.images.generate(prompt="again")

    assert response.data
    assert fake_nanogpt.fake.stats.generation_requests == 2


async def test_200_with_invalid_json_is_a_validation_error(fake_client, fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.invalid_json())

    with pytest.raises(APIResponseValidationError, match="not JSON"):
        await fake_client.images.generate(prompt="garbage")

    assert fake_nanogpt.fake.stats.generation_requests == 1


async def test_200_with_empty_data_is_a_validation_error(fake_client, fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.empty_data())

    with pytest.raises(APIResponseValidationError, match="without any image"):
        await fake_client.images.generate(prompt="empty")


async def test_an_item_without_url_or_b64_fails_on_read(fake_client, fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.item_without_image())

    response = await fake_client.images.generate(prompt="odd")

    with pytest.raises(InvalidImageError, match="neither"):
        await response.data[-1].read()


async def test_invalid_base64_fails_on_read(fake_client, fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.invalid_base64())

    response = await fake_client.images.generate(prompt="bad b64")

    with pytest.raises(InvalidImageError, match="invalid base64"):
        await response.data[0].read()


async def test_an_html_gateway_page_on_a_paid_post_is_not_retried(fake_client, fake_nanogpt):
    # A 502 page from a proxy, not NanoGPT: the origin may have generated and charged.
    fake_nanogpt.fake.enqueue(Fault.html(status=502))

    with pytest.raises(GatewayError, match="may have been charged") as info:
        await fake_client.images.generate(prompt="proxy hiccup")

    assert info.value.request_sent
    assert fake_nanogpt.fake.stats.generation_requests == 1


async def test_an_html_proxy_page_is_retried_when_ambiguous_retries_are_allowed(fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.html(status=502))
    policy = RetryPolicy(retry_ambiguous=True)
    async with AsyncNanoGPT(
        api_key=KEY, base_url=fake_nanogpt.base_url, retry_policy=policy
    ) as client:
        response = await client.images.generate(prompt="proxy hiccup")

    assert response.data
    assert fake_nanogpt.fake.stats.generation_requests == 2


async def test_a_download_answering_html_is_refused(fake_client, fake_nanogpt):
    response = await fake_client.images.generate(prompt="x", response_format="url")
    fake_nanogpt.fake.enqueue(Fault.download_html(), route="download")

    with pytest.raises(InvalidImageError, match="HTML"):
        await response.data[0].read()


async def test_a_stalled_download_times_out_and_is_reported(fake_nanogpt):
    async with AsyncNanoGPT(
        api_key=KEY, base_url=fake_nanogpt.base_url, download_timeout=0.2, max_retries=0
    ) as client:
        response = await client.images.generate(prompt="x", response_format="url")
        fake_nanogpt.fake.enqueue(Fault.download_stall(30), route="download")

        with pytest.raises(ImageDownloadError, match="timed out"):
            await response.data[0].read()


async def test_5xx_longer_than_the_retry_budget_raises_after_max_retries(fake_client, fake_nanogpt):
    fake_nanogpt.fake.enqueue(Fault.status(503), count=10)

    with pytest.raises(InternalServerError):
        await fake_client.images.generate(prompt="down")

    assert fake_nanogpt.fake.stats.generation_requests == fake_client.retry_policy.max_retries + 1


@pytest.mark.parametrize("retry_after", ["garbage", "-5", "1e309"])
async def test_absurd_retry_after_falls_back_to_normal_backoff(
    fake_client, fake_nanogpt, instant_backoff, retry_after
):
    fake_nanogpt.fake.enqueue(Fault.status(503, retry_after=retry_after))

    await fake_client.images.generate(prompt="x")

    [wait] = instant_backoff
    assert 0 <= wait <= fake_client.retry_policy.backoff_initial


async def test_idle_keepalive_connections_closed_by_the_server_do_not_surface(fake_nanogpt):
    fake_nanogpt.fake.keepalive_timeout = 0.05  # applies to connections opened from now on
    async with AsyncNanoGPT(api_key=KEY, base_url=fake_nanogpt.base_url, max_retries=0) as client:
        for _ in range(3):
            response = await client.images.generate(prompt="again and again")
            assert sniff_image(await response.data[0].read())
            # Let the server drop the idle pooled connection before the next request.
            await anyio.sleep(0.2)

    assert fake_nanogpt.fake.stats.generations == 3


async def test_downloads_over_the_size_cap_are_refused(fake_nanogpt):
    fake_nanogpt.fake.image_bytes = 300_000
    async with AsyncNanoGPT(
        api_key=KEY, base_url=fake_nanogpt.base_url, max_download_bytes=100_000
    ) as client:
        response = await client.images.generate(prompt="big", response_format="url")
        with pytest.raises(ImageDownloadError, match="100000-byte cap"):
            await response.data[0].read()


def test_tls_verification_is_on_by_default():
    client = AsyncNanoGPT(api_key=KEY, base_url="https://api.example.test/v1")

    transport = client.channel.pools.api._transport
    assert transport._verify is True  # type: ignore[attr-defined]
    assert client.channel.pools.download._transport._verify is True  # type: ignore[attr-defined]
