"""Images as bytes whatever the server sent: base64, signed URLs, mixed answers; atomic saves."""

from __future__ import annotations

import base64
import re
from decimal import Decimal

import httpx
import pytest

from nanogpt_async import (
    ImageDownloadError,
    ImageURLExpiredError,
    InvalidImageError,
    InvalidInputError,
)
from nanogpt_async._output._files import TEMP_SUFFIX
from nanogpt_async._output._responses import Balance, ImageModel
from tests.conftest import BASE, KEY

GEN = f"{BASE}/images/generations"
CDN = "https://storage.nanogpt.test/files/abc.png?X-Amz-Signature=secret-sig"

EXPIRED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    "<Message>Request has expired</Message></Error>"
)


def answer(*items: dict[str, str]) -> dict[str, object]:
    return {"created": 1, "data": list(items), "cost": 0.01, "remainingBalance": 1.0}


async def test_mixed_url_and_b64_fallback_items_both_read_as_bytes(client, mock_api, png, png_b64):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}, {"b64_json": png_b64}))
    mock_api.get(CDN).respond(200, content=png)

    response = await client.images.generate(prompt="x", n=2, response_format="url")

    assert response.data[0].url == CDN
    assert response.data[1].b64_json == png_b64
    assert [await image.read() for image in response.data] == [png, png]


async def test_url_downloads_never_carry_the_api_key(client, mock_api, png):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}))
    download = mock_api.get(CDN).respond(200, content=png)

    response = await client.images.generate(prompt="x", response_format="url")
    await response.data[0].read()

    headers = download.calls.last.request.headers
    assert "authorization" not in headers
    assert "x-api-key" not in headers
    assert KEY not in str(download.calls.last.request.headers.raw)


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (403, EXPIRED_XML, "is expired (HTTP 403: Request has expired)"),
        (404, "", "is not found (deleted) (HTTP 404)"),
    ],
)
async def test_an_expired_or_deleted_url_raises_a_clear_expired_error(
    client, mock_api, status, body, fragment
):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}))
    route = mock_api.get(CDN).respond(status, text=body)

    response = await client.images.generate(prompt="x", response_format="url")
    with pytest.raises(ImageURLExpiredError, match=re.escape(fragment)) as info:
        await response.data[0].read()

    assert route.call_count == 1  # not retried: it will not come back
    assert "secret-sig" not in str(info.value)  # the signature is a credential too
    assert info.value.status_code == status


async def test_transient_download_failures_are_retried(client, mock_api, png):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}))
    route = mock_api.get(CDN).mock(
        side_effect=[
            httpx.Response(503),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, content=png),
        ]
    )

    response = await client.images.generate(prompt="x", response_format="url")

    assert await response.data[0].read() == png
    assert route.call_count == 3


async def test_a_download_failing_beyond_the_retries_is_a_download_error(client, mock_api):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}))
    mock_api.get(CDN).respond(500)

    response = await client.images.generate(prompt="x", response_format="url")
    with pytest.raises(ImageDownloadError, match="HTTP 500") as info:
        await response.data[0].read()

    assert not isinstance(info.value, ImageURLExpiredError)


async def test_a_url_answering_html_is_not_accepted_as_an_image(client, mock_api):
    mock_api.post(GEN).respond(200, json=answer({"url": CDN}))
    mock_api.get(CDN).respond(200, html="<!DOCTYPE html><html>login</html>")

    response = await client.images.generate(prompt="x", response_format="url")
    with pytest.raises(InvalidImageError, match="an HTML page"):
        await response.data[0].read()


async def test_a_non_http_image_url_is_refused(client, mock_api):
    mock_api.post(GEN).respond(200, json=answer({"url": "file:///etc/passwd"}))

    response = await client.images.generate(prompt="x", response_format="url")
    with pytest.raises(ImageDownloadError, match="only http"):
        await response.data[0].read()


async def test_invalid_base64_is_reported_on_read(client, mock_api):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": "***not base64***"}))

    response = await client.images.generate(prompt="x")
    with pytest.raises(InvalidImageError, match="invalid base64"):
        await response.data[0].read()


async def test_an_item_with_neither_field_fails_alone_and_keeps_the_paid_ones(
    client, mock_api, png, png_b64
):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64}, {"weird": "x"}))

    response = await client.images.generate(prompt="x", n=2)

    assert await response.data[0].read() == png
    with pytest.raises(InvalidImageError, match="neither 'url' nor 'b64_json'"):
        await response.data[1].read()


async def test_large_base64_is_decoded_correctly_off_the_loop(client, mock_api, png):
    big = png + b"\0" * (2 * 1024 * 1024)  # past the offload threshold; still PNG magic
    mock_api.post(GEN).respond(200, json=answer({"b64_json": base64.b64encode(big).decode()}))

    response = await client.images.generate(prompt="x")

    assert await response.data[0].read() == big


async def test_save_picks_the_extension_from_the_bytes_and_leaves_no_temp_files(
    client, mock_api, tmp_path, png_b64, png
):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64}))

    response = await client.images.generate(prompt="x")
    path = await response.data[0].save(tmp_path / "nested" / "fox")

    assert path == tmp_path / "nested" / "fox.png"
    assert path.read_bytes() == png
    assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))


async def test_save_refuses_an_extension_that_contradicts_the_bytes(
    client, mock_api, tmp_path, png_b64
):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64}))

    response = await client.images.generate(prompt="x")
    with pytest.raises(InvalidInputError, match=r"ends in '\.jpg' but the image is image/png"):
        await response.data[0].save(tmp_path / "fox.jpg")
    assert await response.data[0].save(tmp_path / "fox.PNG") == tmp_path / "fox.PNG"


async def test_save_all_writes_every_image(client, mock_api, tmp_path, png_b64):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64}, {"b64_json": png_b64}))

    response = await client.images.generate(prompt="x", n=2)
    paths = await response.save_all(tmp_path, stem="fox")

    assert [p.name for p in paths] == ["fox-0.png", "fox-1.png"]


async def test_image_reprs_stay_short_and_hide_url_signatures(client, mock_api, png_b64):
    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64}, {"url": CDN}))

    response = await client.images.generate(prompt="x", n=2)

    assert repr(response.data[0]) == f"GeneratedImage(index=0, b64_json=<{len(png_b64)} chars>)"
    assert "secret-sig" not in repr(response.data[1])
    assert png_b64 not in repr(response)


async def test_oversized_api_responses_are_refused(mock_api, png_b64):
    from nanogpt_async import APIResponseValidationError, AsyncNanoGPT

    mock_api.post(GEN).respond(200, json=answer({"b64_json": png_b64 * 50}))

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, max_response_bytes=1000) as client:
        with pytest.raises(APIResponseValidationError, match="over the 1000-byte cap"):
            await client.images.generate(prompt="x")


@pytest.mark.parametrize(
    ("raw_cost", "expected"),
    [
        (b"0.01", 0.01),
        (b'"0.02"', 0.02),
        (b"0", 0.0),
        (b"-0.01", None),
        (b'"-1"', None),
        (b'"NaN"', None),
        (b"NaN", None),
        (b"Infinity", None),
        (b"-Infinity", None),
        (b'"Infinity"', None),
        (b"1e400", None),
        (b"1" + b"0" * 400, None),
        (b'"1' + b"0" * 400 + b'"', None),
        (b'"a dollar"', None),
        (b"true", None),
        (b"null", None),
        (b"[0.01]", None),
        (b'{"usd": 0.01}', None),
    ],
)
async def test_cost_is_a_finite_non_negative_number_or_unknown_and_never_loses_the_images(
    client, mock_api, png_b64, raw_cost, expected
):
    body = b'{"created": 1, "data": [{"b64_json": "%s"}], "cost": %s}' % (
        png_b64.encode(),
        raw_cost,
    )
    mock_api.post(GEN).respond(200, content=body, headers={"Content-Type": "application/json"})

    response = await client.images.generate(prompt="x")

    assert response.cost == expected
    assert await response.data[0].read()


async def test_a_missing_cost_is_unknown(client, mock_api, png_b64):
    mock_api.post(GEN).respond(200, json={"data": [{"b64_json": png_b64}]})

    response = await client.images.generate(prompt="x")

    assert response.cost is None


def test_model_prices_keep_only_finite_non_negative_numbers():
    model = ImageModel.from_api(
        {
            "id": "m",
            "pricing": {
                "per_image": {
                    "1024*1024": "NaN",
                    "768*768": "Infinity",
                    "512*512": -1,
                    "256*256": 0.01,
                    "128*128": "1" + "0" * 400,
                }
            },
        }
    )

    assert model.pricing == {"256*256": 0.01}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12.5", Decimal("12.5")), ("NaN", None), ("Infinity", None), ("lots", None), (None, None)],
)
def test_balance_amounts_are_finite_decimals_or_unknown(raw, expected):
    assert Balance.from_api({"usd_balance": raw}).usd_balance == expected
