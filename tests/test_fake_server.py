"""Tests of the fake NanoGPT server itself, with plain httpx (not our client)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import struct
import subprocess
import sys
import threading
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from nanogpt_async.testing import (
    FakeNanoGPT,
    FakeServer,
    Fault,
    ManualClock,
    make_png,
    start_process,
)
from nanogpt_async.testing.pytest_plugin import fake_nanogpt, fake_nanogpt_env

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
# httpx builds a TLS context per client (tens of ms); everything here is plain-http loopback,
# so one shared context keeps the file fast.
TLS = ssl.create_default_context()

__all__ = ["fake_nanogpt", "fake_nanogpt_env"]  # imported fixtures are used, not unused


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def server(clock: ManualClock) -> Iterator[FakeServer]:
    with FakeNanoGPT(api_key=KEY, clock=clock).run_in_thread() as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, verify=TLS) as client:
        yield client


def generate(
    http: httpx.Client,
    server: FakeServer,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    base_url: str | None = None,
) -> httpx.Response:
    return http.post(
        f"{base_url or server.base_url}/images/generations",
        json={"prompt": "a red fox"} if body is None else body,
        headers=AUTH if headers is None else headers,
    )


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check the PNG structure and CRCs; return width, height and the inflated pixels."""
    assert data.startswith(PNG_MAGIC)
    pos, idat, chunks = 8, b"", []
    width = height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append(kind)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", payload[:8])
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    assert chunks[0] == b"IHDR"
    assert chunks[-1] == b"IEND"
    return width, height, zlib.decompress(idat)


def b64_images(response: httpx.Response) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


# -- PNG -------------------------------------------------------------------------------


def test_small_png_is_a_decodable_64x64_rgb_image_of_a_few_hundred_bytes() -> None:
    png = make_png("a cat #1")
    width, height, pixels = decode_png(png)
    assert (width, height) == (64, 64)
    assert len(pixels) == height * (1 + 3 * width)
    assert 100 < len(png) < 2000


def test_sized_png_is_decodable_and_about_the_requested_size() -> None:
    png = make_png("big", 300_000)
    width, height, pixels = decode_png(png)
    assert len(pixels) == height * (1 + 3 * width)
    assert abs(len(png) - 300_000) < 1000


def test_pngs_differ_by_text() -> None:
    assert make_png("a") != make_png("b")
    assert make_png("a", 50_000) != make_png("b", 50_000)


# -- generations -----------------------------------------------------------------------


def test_b64_response_has_n_distinct_pngs_cost_and_remaining_balance(
    server: FakeServer, http: httpx.Client
) -> None:
    response = generate(http, server, {"prompt": "a red fox", "n": 3})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"].startswith("req_")
    body = response.json()
    assert body["cost"] == pytest.approx(0.015)
    assert body["paymentSource"] == "USD"
    assert body["remainingBalance"] == pytest.approx(100 - 0.015)
    assert isinstance(body["created"], int)
    assert all(set(item) == {"b64_json"} for item in body["data"])
    images = b64_images(response)
    assert len(set(images)) == 3
    for image in images:
        width, height, pixels = decode_png(image)
        assert len(pixels) == height * (1 + 3 * width)


def test_same_prompt_in_two_requests_gives_different_images(
    server: FakeServer, http: httpx.Client
) -> None:
    first = b64_images(generate(http, server))
    second = b64_images(generate(http, server))
    assert first != second


def test_image_bytes_knob_serves_big_decodable_pngs(server: FakeServer, http: httpx.Client) -> None:
    server.fake.image_bytes = 200_000
    (image,) = b64_images(generate(http, server))
    assert abs(len(image) - 200_000) < 1000
    decode_png(image)


def test_both_base_paths_serve_generations_and_models(
    server: FakeServer, http: httpx.Client
) -> None:
    for base in (server.base_url, server.v1_base_url):
        assert generate(http, server, base_url=base).status_code == 200
        assert http.get(f"{base}/image-models").status_code == 200
    assert server.base_url.endswith("/api/v1")
    assert server.v1_base_url.endswith("/v1")


def test_same_seed_and_requests_give_same_answers() -> None:
    def run() -> list[object]:
        fake = FakeNanoGPT(seed=7, url_fallback_rate=0.5, clock=ManualClock())
        with fake.run_in_thread() as srv, httpx.Client(verify=TLS) as client:
            body = {"prompt": "x", "n": 4, "response_format": "url"}
            data = generate(client, srv, body).json()["data"]
        # URLs embed the port and date, so compare the shape and the file ids only.
        return [item.get("b64_json") or urllib.parse.urlsplit(item["url"]).path for item in data]

    assert run() == run()


@pytest.mark.parametrize(
    ("headers", "message", "code"),
    [
        ({}, "Missing API key", "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, "Invalid API key", "invalid_api_key"),
        ({"Authorization": f"Basic {KEY}"}, "Missing API key", "missing_api_key"),
        # Generations take the key as a Bearer token only (the spec's security for the path).
        ({"x-api-key": KEY}, "Missing API key", "missing_api_key"),
    ],
)
def test_missing_or_wrong_bearer_key_answers_401_missing_or_invalid_api_key(
    server: FakeServer, http: httpx.Client, headers: dict[str, str], message: str, code: str
) -> None:
    response = generate(http, server, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert message in error["message"]
    assert error["code"] == code
    assert response.headers["X-Request-ID"]
    assert server.fake.stats.generations == 0


def test_api_key_none_accepts_any_non_empty_key(server: FakeServer, http: httpx.Client) -> None:
    server.fake.api_key = None
    assert generate(http, server, headers={"Authorization": "Bearer anything"}).status_code == 200
    assert generate(http, server, headers={}).status_code == 401


PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(make_png("input")).decode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "n": 2, "model": "flux-kontext"}, "n"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "size": 1024}, "size"),
        ({"prompt": "x", "strength": 2}, "strength"),
        ({"prompt": "x", "imageDataUrl": "https://example.com/cat.png"}, "imageDataUrl"),
        ({"prompt": "x", "imageDataUrl": "data:image/bmp;base64,AAAA"}, "imageDataUrl"),
        ({"prompt": "x", "imageDataUrl": "data:image/png;base64,***"}, "imageDataUrl"),
        ({"prompt": "x", "imageDataUrls": PNG_DATA_URL}, "imageDataUrls"),
        ({"prompt": "x", "imageDataUrls": [PNG_DATA_URL, "nope"]}, "imageDataUrls"),
        ({"prompt": "x", "maskDataUrl": "data:text/plain;base64,AAAA"}, "maskDataUrl"),
    ],
)
def test_invalid_body_answers_400_invalid_request_error_not_charged(
    server: FakeServer, http: httpx.Client, body: Any, param: str
) -> None:
    response = generate(http, server, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert server.fake.stats.generations == 0


def test_valid_data_urls_are_accepted(server: FakeServer, http: httpx.Client) -> None:
    body = {
        "prompt": "x",
        "model": "gpt-image-1",
        "imageDataUrl": PNG_DATA_URL,
        "imageDataUrls": [PNG_DATA_URL, PNG_DATA_URL.replace("image/png", "image/jpeg")],
        "maskDataUrl": PNG_DATA_URL,
    }
    assert generate(http, server, body).status_code == 200


def test_body_that_is_not_json_answers_400(server: FakeServer, http: httpx.Client) -> None:
    response = http.post(f"{server.base_url}/images/generations", content=b"{nope", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_input_image_over_4_mb_answers_413(server: FakeServer, http: httpx.Client) -> None:
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (4 * 1024 * 1024 + 1)).decode()
    response = generate(http, server, {"prompt": "x", "imageDataUrls": [big]})
    assert response.status_code == 413
    assert server.fake.stats.generations == 0


def test_unknown_model_answers_404(server: FakeServer, http: httpx.Client) -> None:
    response = generate(http, server, {"prompt": "x", "model": "no-such-model"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_forbidden_prompt_answers_400_content_policy_violation_not_charged(
    server: FakeServer, http: httpx.Client
) -> None:
    response = generate(http, server, {"prompt": "something Forbidden here"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert server.fake.stats.charged_usd == 0


def test_insufficient_balance_answers_402_legacy_body(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.balance = 0.007
    assert generate(http, server).status_code == 200
    response = generate(http, server, {"prompt": "x", "n": 2})
    assert response.status_code == 402
    assert response.json() == {
        "error": "Insufficient balance",
        "status": 402,
        "requiredBalance": 0.01,
    }
    assert server.fake.balance == pytest.approx(0.002)


def test_daily_request_cap_answers_429_with_retry_after_until_utc_midnight(
    server: FakeServer, http: httpx.Client
) -> None:
    fake = server.fake
    fake.daily_request_cap = 2
    assert [generate(http, server).status_code for _ in range(2)] == [200, 200]
    response = generate(http, server)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "daily_rpd_limit_exceeded"
    assert int(response.headers["Retry-After"]) == pytest.approx(
        fake.seconds_until_utc_midnight(), abs=2
    )
    assert 1 <= int(response.headers["Retry-After"]) <= 86_400


def test_daily_usd_cap_answers_429_daily_usd_limit_exceeded(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.daily_usd_cap = 0.005
    assert generate(http, server).status_code == 200
    response = generate(http, server)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "daily_usd_limit_exceeded"


def test_token_bucket_answers_429_with_retry_after_until_next_token(
    server: FakeServer, http: httpx.Client, clock: ManualClock
) -> None:
    fake = server.fake
    fake.rate_limit, fake.burst = 0.25, 2
    assert [generate(http, server).status_code for _ in range(2)] == [200, 200]
    response = generate(http, server)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["Retry-After"] == "4"
    clock.advance(3)
    assert generate(http, server).headers["Retry-After"] == "1"
    clock.advance(1)
    assert generate(http, server).status_code == 200
    assert fake.stats.rate_limited == 2


def test_a_finer_retry_after_granularity_also_sends_retry_after_ms(
    server: FakeServer, http: httpx.Client, clock: ManualClock
) -> None:
    fake = server.fake
    fake.rate_limit, fake.burst, fake.retry_after_granularity = 40.0, 1, 0.1
    assert generate(http, server).status_code == 200
    response = generate(http, server)  # the next token in 0.025 s: one step
    assert response.status_code == 429
    assert (response.headers["retry-after-ms"], response.headers["Retry-After"]) == ("100", "1")
    fake.rate_limit = 4.0  # the next token in 0.25 s: three steps
    assert generate(http, server).headers["retry-after-ms"] == "300"
    fake.retry_after_granularity = 1.0  # the real API's whole seconds, and nothing else
    assert "retry-after-ms" not in generate(http, server).headers
    with pytest.raises(ValueError, match="retry_after_granularity"):
        FakeNanoGPT(retry_after_granularity=0)


def test_error_rate_answers_5xx_before_charging(server: FakeServer, http: httpx.Client) -> None:
    server.fake.error_rate = 1.0
    statuses = {generate(http, server).status_code for _ in range(12)}
    assert statuses <= {500, 502, 503}
    assert len(statuses) > 1
    assert server.fake.stats.errors_sent == 12
    assert server.fake.stats.generations == 0


def test_reset_rate_charges_then_drops_the_connection(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.reset_rate = 1.0
    with pytest.raises(httpx.TransportError):
        generate(http, server)
    assert server.fake.stats.generations == 1
    assert server.fake.stats.connections_reset == 1


# -- signed URLs -----------------------------------------------------------------------


def test_url_response_downloads_png_from_another_origin_without_credentials(
    server: FakeServer, http: httpx.Client
) -> None:
    response = generate(http, server, {"prompt": "x", "n": 2, "response_format": "url"})
    items = response.json()["data"]
    assert all(set(item) == {"url"} for item in items)
    for item in items:
        assert item["url"].startswith(f"{server.download_base_url}/files/")
        assert "X-Amz-Signature=" in item["url"]
        download = http.get(item["url"])
        assert download.status_code == 200
        assert download.headers["Content-Type"] == "image/png"
        decode_png(download.content)
    assert server.download_base_url != server.root_url
    assert server.fake.stats.downloads == 2
    assert server.fake.stats.download_requests_with_credentials == 0


def test_download_with_api_key_is_counted_as_carrying_credentials(
    server: FakeServer, http: httpx.Client
) -> None:
    url = generate(http, server, {"prompt": "x", "response_format": "url"}).json()["data"][0]
    http.get(url["url"], headers=AUTH)
    http.get(url["url"], headers={"x-api-key": KEY})
    assert server.fake.stats.download_requests_with_credentials == 2


def test_url_fallback_rate_one_returns_b64_items(server: FakeServer, http: httpx.Client) -> None:
    server.fake.url_fallback_rate = 1.0
    data = generate(http, server, {"prompt": "x", "n": 2, "response_format": "url"}).json()
    assert all(set(item) == {"b64_json"} for item in data["data"])


def test_url_fallback_rate_half_mixes_urls_and_b64(server: FakeServer, http: httpx.Client) -> None:
    server.fake.url_fallback_rate = 0.5
    kinds = set()
    for _ in range(5):
        data = generate(http, server, {"prompt": "x", "n": 4, "response_format": "url"})
        kinds |= {next(iter(item)) for item in data.json()["data"]}
    assert kinds == {"url", "b64_json"}


def test_signed_url_expires_after_ttl_with_403_access_denied(
    server: FakeServer, http: httpx.Client, clock: ManualClock
) -> None:
    server.fake.url_ttl = 60
    url = generate(http, server, {"prompt": "x", "response_format": "url"}).json()["data"][0]
    clock.advance(59)
    assert http.get(url["url"]).status_code == 200
    clock.advance(1)
    response = http.get(url["url"])
    assert response.status_code == 403
    assert "<Code>AccessDenied</Code>" in response.text
    assert "Request has expired" in response.text
    assert server.fake.stats.expired_downloads == 1


def test_file_is_gone_with_404_after_file_ttl(
    server: FakeServer, http: httpx.Client, clock: ManualClock
) -> None:
    server.fake.file_ttl = 120
    url = generate(http, server, {"prompt": "x", "response_format": "url"}).json()["data"][0]
    clock.advance(120)
    response = http.get(url["url"])
    assert response.status_code == 404
    assert "NoSuchKey" in response.text
    assert server.fake.stats.missing_downloads == 1


def test_tampered_signature_or_expiry_answers_403(server: FakeServer, http: httpx.Client) -> None:
    url = generate(http, server, {"prompt": "x", "response_format": "url"}).json()["data"][0]
    parts = urllib.parse.urlsplit(url["url"])
    query = dict(urllib.parse.parse_qsl(parts.query))
    for key, value in (("X-Amz-Signature", "0" * 64), ("X-Amz-Expires", "999999")):
        tampered = parts._replace(query=urllib.parse.urlencode({**query, key: value}))
        response = http.get(urllib.parse.urlunsplit(tampered))
        assert response.status_code == 403
        assert "SignatureDoesNotMatch" in response.text


# -- other routes ----------------------------------------------------------------------


def test_image_models_detailed_lists_pricing_capabilities_and_resolutions(
    server: FakeServer, http: httpx.Client
) -> None:
    body = http.get(f"{server.base_url}/image-models", params={"detailed": "true"}).json()
    models = {model["id"]: model for model in body["data"]}
    assert {"hidream", "flux-kontext", "gpt-image-1", "flux-lora/inpainting"} <= set(models)
    hidream = models["hidream"]
    assert hidream["pricing"]["per_image"]["1024*1024"] == 0.005
    assert hidream["pricing"]["currency"] == "USD"
    assert hidream["capabilities"]["image_generation"] is True
    assert "1024x1024" in hidream["supported_parameters"]["resolutions"]
    assert hidream["supported_parameters"]["max_images"] >= 1
    plain = http.get(f"{server.base_url}/image-models").json()["data"][0]
    assert "pricing" not in plain


def test_check_balance_returns_decimal_strings_after_charges(
    server: FakeServer, http: httpx.Client
) -> None:
    generate(http, server, {"prompt": "x", "n": 2})
    response = http.post(f"{server.root_url}/api/check-balance", headers={"x-api-key": KEY})
    body = response.json()
    assert body["usd_balance"] == "99.99000000"
    assert isinstance(body["nano_balance"], str)
    assert body["nanoDepositAddress"].startswith("nano_")
    wrong = http.post(f"{server.root_url}/api/check-balance", headers={"x-api-key": "no"})
    assert wrong.status_code == 401


def test_unknown_api_path_answers_json_404_with_request_id(
    server: FakeServer, http: httpx.Client
) -> None:
    response = http.get(f"{server.base_url}/no-such-route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["X-Request-ID"]


# -- scripted faults -------------------------------------------------------------------


def test_status_fault_default_body_retry_after_and_fifo_count(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.status(503, retry_after="2"), count=2)
    first, second, third = (generate(http, server) for _ in range(3))
    for response in (first, second):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.headers["X-Request-ID"]
        assert set(response.json()["error"]) >= {"message", "type", "code"}
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    assert third.status_code == 200
    assert server.fake.stats.errors_sent == 2
    assert server.fake.stats.generations == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": 400, "message": "spec shape"}, b'{"error": 400, "message": "spec shape"}'),
        ("plain text", b"plain text"),
        (b"", b""),
    ],
)
def test_status_fault_sends_dict_str_or_bytes_body_and_headers(
    server: FakeServer, http: httpx.Client, body: Any, expected: bytes
) -> None:
    server.fake.enqueue(Fault.status(400, body=body, headers={"X-Extra": "1"}))
    response = generate(http, server)
    assert response.status_code == 400
    assert response.content == expected
    assert response.headers["X-Extra"] == "1"


def test_rate_limited_fault_answers_429_rate_limit_exceeded(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.rate_limited(retry_after="3"))
    response = generate(http, server)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.fake.stats.rate_limited == 1


@pytest.mark.parametrize("kind", ["rpd", "usd"])
def test_daily_cap_fault_answers_429_with_seconds_until_midnight(
    server: FakeServer, http: httpx.Client, kind: str
) -> None:
    server.fake.enqueue(Fault.daily_cap(kind))  # type: ignore[arg-type]
    response = generate(http, server)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == f"daily_{kind}_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 86_400


def test_reset_before_response_fault_drops_connection_without_charging(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.reset_before_response())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        generate(http, server)
    assert server.fake.stats.generations == 0
    assert generate(http, server).status_code == 200


@pytest.mark.parametrize("fault", [Fault.reset_after_charge(), Fault.short_body()])
def test_mid_response_faults_charge_then_cut_the_body(
    server: FakeServer, http: httpx.Client, fault: Fault
) -> None:
    server.fake.enqueue(fault)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        generate(http, server)
    assert server.fake.stats.generations == 1
    assert server.fake.stats.charged_usd == pytest.approx(0.005)
    assert fault.charged


def test_invalid_json_fault_answers_200_garbage_and_charges(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.invalid_json())
    response = generate(http, server)
    assert response.status_code == 200
    with pytest.raises(ValueError, match=r"."):
        response.json()
    assert server.fake.stats.generations == 1


def test_empty_data_fault_answers_200_with_no_items_and_no_charge(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.empty_data())
    body = generate(http, server).json()
    assert body["data"] == []
    assert body["cost"] == 0
    assert server.fake.stats.generations == 0


def test_item_without_image_fault_sends_item_with_neither_url_nor_b64(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.item_without_image())
    data = generate(http, server, {"prompt": "x", "n": 2}).json()["data"]
    assert "url" not in data[0]
    assert "b64_json" not in data[0]
    assert "b64_json" in data[1]


def test_invalid_base64_fault_sends_undecodable_b64_json(
    server: FakeServer, http: httpx.Client
) -> None:
    server.fake.enqueue(Fault.invalid_base64())
    item = generate(http, server).json()["data"][0]
    with pytest.raises(ValueError, match=r"."):
        base64.b64decode(item["b64_json"], validate=True)


@pytest.mark.parametrize("status", [200, 502])
def test_html_fault_answers_a_proxy_page(
    server: FakeServer, http: httpx.Client, status: int
) -> None:
    server.fake.enqueue(Fault.html(status=status))
    response = generate(http, server)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    assert server.fake.stats.generations == 0


def test_faults_apply_only_to_their_route(server: FakeServer, http: httpx.Client) -> None:
    server.fake.enqueue(Fault.status(500), route="image-models")
    assert generate(http, server).status_code == 200
    assert http.get(f"{server.base_url}/image-models").status_code == 500
    assert server.fake.pending_faults() == 0


def test_enqueue_rejects_faults_that_do_not_fit_the_route() -> None:
    fake = FakeNanoGPT()
    with pytest.raises(ValueError, match="does not apply"):
        fake.enqueue(Fault.download_stall(1), route="generations")
    with pytest.raises(ValueError, match="does not apply"):
        fake.enqueue(Fault.invalid_json(), route="download")
    with pytest.raises(ValueError, match="count"):
        fake.enqueue(Fault.status(500), count=0)


def _url(http: httpx.Client, server: FakeServer) -> str:
    data = generate(http, server, {"prompt": "x", "response_format": "url"}).json()["data"]
    url: str = data[0]["url"]
    return url


def test_download_status_fault_answers_that_status(server: FakeServer, http: httpx.Client) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.status(503), route="download")
    assert http.get(url).status_code == 503
    assert http.get(url).status_code == 200


def test_download_html_fault_answers_200_text_html(server: FakeServer, http: httpx.Client) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.download_html())
    response = http.get(url)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")


def test_download_stall_fault_sends_headers_then_stalls(
    server: FakeServer, http: httpx.Client
) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.download_stall(60))
    with http.stream("GET", url, timeout=httpx.Timeout(5, read=0.1)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/png"
        with pytest.raises(httpx.ReadTimeout):
            response.read()


def test_download_stall_of_zero_seconds_still_delivers_the_image(
    server: FakeServer, http: httpx.Client
) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.download_stall(0))
    decode_png(http.get(url).content)


def test_redirect_to_api_host_fault_lands_on_capture_which_records_headers(
    server: FakeServer, http: httpx.Client
) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.redirect_to_api_host())
    response = http.get(url, headers={"X-Probe": "1"}, follow_redirects=True)
    assert response.status_code == 200
    assert response.history[0].status_code == 302
    assert str(response.url) == f"{server.root_url}/capture"
    (captured,) = server.fake.stats.captured_headers
    assert captured["X-Probe"] == "1"
    assert "Authorization" not in captured


def test_download_reset_before_response_fault_drops_connection(
    server: FakeServer, http: httpx.Client
) -> None:
    url = _url(http, server)
    server.fake.enqueue(Fault.reset_before_response(), route="download")
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url)


# -- stats -----------------------------------------------------------------------------


def test_stats_count_requests_charges_prompts_and_reset(
    server: FakeServer, http: httpx.Client
) -> None:
    fake = server.fake
    generate(http, server, {"prompt": "a", "n": 2})
    generate(http, server, {"prompt": "a"})
    generate(http, server, {"prompt": "b"})
    generate(http, server, {"prompt": ""})
    stats = fake.stats
    assert stats.generation_requests == 4
    assert stats.generations == 3
    assert stats.images_generated == 4
    assert stats.charged_usd == pytest.approx(0.02)
    assert stats.generations_by_prompt == {"a": 2, "b": 1}
    assert stats.statuses == {200: 3, 400: 1}
    assert stats.in_flight == 0
    assert stats.max_in_flight == 1
    fake.reset_stats()
    assert fake.stats.generation_requests == 0
    assert fake.stats.generations_by_prompt == {}


@pytest.mark.asyncio_only(
    reason="FakeNanoGPT.serve() runs aiohttp's server on the calling asyncio loop"
)
async def test_max_in_flight_counts_concurrent_generations() -> None:
    fake = FakeNanoGPT(latency=0.1)
    async with fake.serve() as srv, httpx.AsyncClient(verify=TLS) as client:
        url = f"{srv.base_url}/images/generations"
        responses = await asyncio.gather(
            *(client.post(url, json={"prompt": str(i)}, headers=AUTH) for i in range(4))
        )
    assert [r.status_code for r in responses] == [200] * 4
    assert fake.stats.max_in_flight == 4
    assert fake.stats.in_flight == 0


# -- ways to run -----------------------------------------------------------------------


@pytest.mark.asyncio_only(
    reason="FakeNanoGPT.serve() runs aiohttp's server on the calling asyncio loop"
)
async def test_serve_runs_on_the_current_asyncio_loop() -> None:
    async with FakeNanoGPT().serve() as srv, httpx.AsyncClient(verify=TLS) as client:
        response = await client.post(
            f"{srv.base_url}/images/generations", json={"prompt": "x"}, headers=AUTH
        )
    assert response.status_code == 200


@pytest.mark.asyncio_only(
    reason="FakeNanoGPT.serve() runs aiohttp's server on the calling asyncio loop"
)
async def test_serve_stops_promptly_with_a_slow_generation_in_flight() -> None:
    fake = FakeNanoGPT(latency=60)
    entered = asyncio.Event()
    count_arrival = fake.enter_generation

    def arrive() -> None:
        count_arrival()
        entered.set()

    fake.enter_generation = arrive  # type: ignore[method-assign]
    async with fake.serve() as srv, httpx.AsyncClient(verify=TLS) as client:
        request = asyncio.ensure_future(
            client.post(f"{srv.base_url}/images/generations", json={"prompt": "x"}, headers=AUTH)
        )
        await entered.wait()
    with pytest.raises(httpx.TransportError):
        await request


def test_run_in_thread_serves_trio_code(server: FakeServer) -> None:
    async def main() -> int:
        async with httpx.AsyncClient(verify=TLS) as client:
            response = await client.post(
                f"{server.base_url}/images/generations", json={"prompt": "x"}, headers=AUTH
            )
            return response.status_code

    assert trio.run(main) == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])  # noqa: S104 - refused hosts
def test_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"), FakeNanoGPT().run_in_thread(host):
        pass


def test_run_in_thread_with_keepalive_timeout_stops_and_leaves_no_thread() -> None:
    # Threads, not a count: the previous test's pytest-timeout timer (cancelled, it ends
    # when its thread next runs) may end meanwhile, which made a count fail under load.
    before = set(threading.enumerate())
    fake = FakeNanoGPT(keepalive_timeout=0.5)
    with fake.run_in_thread() as srv, httpx.Client(verify=TLS) as client:
        assert generate(client, srv).status_code == 200
    assert set(threading.enumerate()) - before == set()


def test_localhost_is_served_on_127_0_0_1() -> None:
    with FakeNanoGPT().run_in_thread("localhost") as srv:
        assert srv.host == "127.0.0.1"


def test_process_mode_prints_base_url_serves_and_exits_0_on_sigint(http: httpx.Client) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "nanogpt_async.testing", "--port", "0", "--api-key", "k2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # start_process (the benchmark helper) boots its child while this one does.
        with start_process(api_key="k3", error_rate=1.0) as helper_base_url:
            failing = http.post(
                f"{helper_base_url}/images/generations",
                json={"prompt": "x"},
                headers={"Authorization": "Bearer k3"},
            )
        assert failing.status_code in {500, 502, 503}

        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("NANOGPT_BASE_URL=http://127.0.0.1:")
        base_url = line.strip().removeprefix("NANOGPT_BASE_URL=")
        assert base_url.endswith("/api/v1")
        response = http.post(
            f"{base_url}/images/generations",
            json={"prompt": "x"},
            headers={"Authorization": "Bearer k2"},
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert stdout == ""
    assert "Traceback" not in stderr


def test_fake_nanogpt_fixture_yields_a_running_server(
    fake_nanogpt: FakeServer, http: httpx.Client
) -> None:
    fake_nanogpt.fake.error_rate = 1.0
    response = http.post(
        f"{fake_nanogpt.base_url}/images/generations",
        json={"prompt": "x"},
        headers={"Authorization": f"Bearer {fake_nanogpt.api_key}"},
    )
    assert response.status_code >= 500


def test_fake_nanogpt_env_fixture_sets_environment(fake_nanogpt_env: FakeServer) -> None:
    assert os.environ["NANOGPT_BASE_URL"] == fake_nanogpt_env.base_url
    assert os.environ["NANOGPT_API_KEY"] == fake_nanogpt_env.api_key


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(5)
    assert clock() == 5.0
    clock.advance(2.5)
    assert clock() == 7.5
    clock.set(1)
    assert clock() == 1.0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
