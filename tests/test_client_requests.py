"""What the client sends and how it reads answers (respx; no network)."""

from __future__ import annotations

import base64
import inspect
import json
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import respx

from nanogpt_async import (
    AsyncNanoGPT,
    ImageInputError,
    Images,
    InvalidInputError,
    RetryPolicy,
    fetch_image_data_url,
)
from nanogpt_async._client import _api_root
from nanogpt_async._input._body import ITEM_FIELDS, fields_of
from tests.conftest import BASE, KEY

SPEC = Path(__file__).resolve().parent / "vendor" / "nanogpt-openapi.json"


def _request_schema() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text())
    schema: dict[str, Any] = spec["components"]["schemas"]["OpenAIImageGenerationsRequest"]
    return schema


def ok_body(png_b64: str, n: int = 1) -> dict[str, Any]:
    return {
        "created": 1700000000,
        "data": [{"b64_json": png_b64} for _ in range(n)],
        "cost": 0.005 * n,
        "paymentSource": "USD",
        "remainingBalance": 9.99,
    }


def sent_json(route: respx.Route, call: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[call].request.content)
    return body


async def test_generate_sends_only_given_fields_with_bearer_key(client, mock_api, png_b64):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))

    await client.images.generate(prompt="a red fox", n=1, size="1024x1024")

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert sent_json(route) == {"prompt": "a red fox", "n": 1, "size": "1024x1024"}


async def test_every_field_maps_to_nanogpt_json_names_and_validates_against_the_spec(
    client, mock_api, png, png_b64
):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))

    await client.images.generate(
        prompt="repaint",
        model="flux-kontext",
        n=2,
        size="auto",
        response_format="url",
        user="user-7",
        image=png,
        images=[png, png],
        mask=png,
        strength=0.5,
        guidance_scale=7.5,
        num_inference_steps=30,
        seed=42,
        kontext_max_mode=True,
        extra_body={"style": "vivid"},
    )

    body = sent_json(route)
    data_url = body["imageDataUrl"]
    assert data_url.startswith("data:image/png;base64,")
    assert body["imageDataUrls"] == [data_url, data_url]
    assert body["maskDataUrl"] == data_url
    assert {k: v for k, v in body.items() if "DataUrl" not in k} == {
        "prompt": "repaint",
        "model": "flux-kontext",
        "n": 2,
        "size": "auto",
        "response_format": "url",
        "user": "user-7",
        "strength": 0.5,
        "guidance_scale": 7.5,
        "num_inference_steps": 30,
        "seed": 42,
        "kontext_max_mode": True,
        "style": "vivid",
    }
    jsonschema.validate({k: v for k, v in body.items() if k != "style"}, _request_schema())
    # In the signature's order, the image fields last: the bytes sent do not depend on how
    # generate() hands its arguments to the body builder.
    assert list(body)[:6] == ["prompt", "model", "n", "size", "response_format", "user"]
    assert list(body)[-4:] == ["style", "imageDataUrl", "imageDataUrls", "maskDataUrl"]


def test_every_argument_of_generate_and_edit_but_timeout_is_a_known_request_field() -> None:
    # generate() and edit() hand their locals() to the body builder (fields_of): a parameter
    # that is not a request field must be left out there, or every call would be refused.
    for method in (Images.generate, Images.edit):
        names = set(inspect.signature(method).parameters) - {"self", "timeout"}
        assert names <= ITEM_FIELDS, method.__name__
    arguments = {"self": object(), "timeout": 5.0, "prompt": "x", "seed": None}
    assert fields_of(arguments) == {"prompt": "x", "seed": None}


async def test_response_is_typed_with_cost_balance_and_request_id(client, mock_api, png, png_b64):
    mock_api.post(f"{BASE}/images/generations").respond(
        200, json={**ok_body(png_b64, 2), "futureField": 1}, headers={"X-Request-ID": "req_9"}
    )

    response = await client.images.generate(prompt="two foxes", n=2)

    assert response.created == 1700000000
    assert response.cost == pytest.approx(0.01)
    assert response.payment_source == "USD"
    assert response.remaining_balance == pytest.approx(9.99)
    assert response.request_id == "req_9"
    assert response.raw["futureField"] == 1
    assert [await image.read() for image in response.data] == [png, png]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"prompt": "   "}, "prompt must be a non-empty string"),
        ({"prompt": "x", "n": 0}, "n must be at least 1"),
        ({"prompt": "x", "n": 1.5}, "n must be a whole number"),
        ({"prompt": "x", "strength": 1.5}, "strength must be from 0.0 to 1.0"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale must be from 0.0 to 20.0"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps must be from 1 to 100"),
        ({"prompt": "x", "response_format": "png"}, "response_format must be 'url' or 'b64_json'"),
        ({"prompt": "x", "kontext_max_mode": "yes"}, "kontext_max_mode must be True or False"),
        ({"prompt": "x", "images": "not-a-list"}, "images must be a list"),
    ],
)
async def test_bad_arguments_fail_before_anything_is_sent(client, mock_api, kwargs, fragment):
    route = mock_api.post(f"{BASE}/images/generations")

    with pytest.raises(InvalidInputError, match=fragment):
        await client.images.generate(**kwargs)

    assert not route.called


async def test_input_image_mime_comes_from_bytes_not_file_name(client, mock_api, tmp_path, png):
    misnamed = tmp_path / "photo.jpg"
    misnamed.write_bytes(png)
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body("iVBORw0KGgo="))

    await client.images.generate(prompt="x", image=misnamed)

    assert sent_json(route)["imageDataUrl"].startswith("data:image/png;base64,")


async def test_data_url_input_is_checked_and_passed_through(client, mock_api, png, png_b64):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))

    await client.images.generate(prompt="x", image=f"data:image/png;base64,{png_b64}")

    assert sent_json(route)["imageDataUrl"] == f"data:image/png;base64,{png_b64}"


async def test_oversized_input_image_is_refused_with_its_size_and_the_limit(
    client, mock_api, tmp_path, png
):
    big = tmp_path / "big.png"
    big.write_bytes(png + b"\0" * (4 * 1024 * 1024))
    route = mock_api.post(f"{BASE}/images/generations")

    with pytest.raises(
        ImageInputError,
        match=r"is 4\.\d\d MB, 5\.\d\d MB as a data URL; NanoGPT accepts at most 4\.00 MB",
    ):
        await client.images.generate(prompt="x", image=big)
    with pytest.raises(ImageInputError, match=r"at most 4\.00 MB per input image after encoding"):
        await client.images.generate(prompt="x", images=[png + b"\0" * (4 * 1024 * 1024)])
    assert not route.called


# "4 MB or smaller after encoding" (the endpoint reference): the data URL's length counts.
_LIMIT = 4 * 1024 * 1024
_PNG_PREFIX = len("data:image/png;base64,")
_LARGEST_PNG = (_LIMIT - _PNG_PREFIX) // 4 * 3  # the most bytes whose data URL fits


@pytest.mark.parametrize("as_kind", ["bytes", "path", "data_url"])
async def test_input_image_under_4_mb_but_over_it_as_a_data_url_is_refused(
    client, mock_api, tmp_path, png, as_kind
):
    route = mock_api.post(f"{BASE}/images/generations")
    raw = png + b"\0" * (int(3.6 * 1024 * 1024) - len(png))  # 3.6 MiB: a 4.8 MiB data URL
    value: Any = {
        "bytes": raw,
        "path": tmp_path / "big.png",
        "data_url": "data:image/png;base64," + base64.b64encode(raw).decode(),
    }[as_kind]
    (tmp_path / "big.png").write_bytes(raw)

    with pytest.raises(ImageInputError, match=r"as a data URL; NanoGPT accepts at most 4\.00 MB"):
        await client.images.generate(prompt="x", image=value)
    assert not route.called


async def test_largest_image_whose_data_url_fits_4_mb_is_sent_one_byte_more_is_not(
    client, mock_api, png, png_b64
):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))
    fits = png + b"\0" * (_LARGEST_PNG - len(png))

    await client.images.generate(prompt="x", image=fits)
    assert len(sent_json(route)["imageDataUrl"]) <= _LIMIT
    with pytest.raises(ImageInputError, match="after encoding"):
        await client.images.generate(prompt="x", image=fits + b"\0")
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"%PDF-1.4 not an image", "is not a PNG, JPEG, WebP or GIF image"),
        ("data:text/plain;base64,aGVsbG8=", "data URL must look like"),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("https://example.com/cat.png", "NanoGPT does not fetch URLs"),
        ("/no/such/file.png", "cannot read image file"),
    ],
)
async def test_unusable_input_images_are_refused_before_sending(client, mock_api, value, fragment):
    route = mock_api.post(f"{BASE}/images/generations")

    with pytest.raises(ImageInputError, match=fragment):
        await client.images.generate(prompt="x", image=value)

    assert not route.called


async def test_fetch_image_data_url_downloads_without_the_key(mock_api, png):
    route = mock_api.get("https://img.example/cat").respond(200, content=png)

    data_url = await fetch_image_data_url("https://img.example/cat")

    assert data_url.startswith("data:image/png;base64,")
    assert "authorization" not in route.calls.last.request.headers


async def test_fetch_image_data_url_refuses_non_images(mock_api):
    mock_api.get("https://img.example/page").respond(200, text="<html>nope</html>")

    with pytest.raises(ImageInputError, match="not a PNG, JPEG, WebP or GIF"):
        await fetch_image_data_url("https://img.example/page")


async def test_models_are_typed_with_prices_capabilities_and_resolutions(client, mock_api):
    route = mock_api.get(f"{BASE}/image-models").respond(
        200,
        json={
            "data": [
                {
                    "id": "hidream",
                    "name": "HiDream",
                    "pricing": {"per_image": {"1024*1024": 0.005, "1536*1536": 0.01}},
                    "capabilities": {"image_generation": True, "image_to_image": True},
                    "supported_parameters": {"resolutions": ["1024x1024"], "max_images": 4},
                }
            ]
        },
    )

    [model] = await client.images.models()

    assert route.calls.last.request.url.params["detailed"] == "true"
    assert model.id == "hidream"
    assert model.price_for("1536x1536") == 0.01
    assert model.price_for() == 0.005
    assert model.capabilities.image_to_image
    assert not model.capabilities.inpainting
    assert model.resolutions == ("1024x1024",)
    assert model.max_images == 4


async def test_balance_uses_x_api_key_and_returns_decimals(client, mock_api):
    route = mock_api.post("https://api.nanogpt.test/api/check-balance").respond(
        200, json={"usd_balance": "129.46956147", "nano_balance": "26.7", "nanoDepositAddress": "n"}
    )

    balance = await client.balance()

    request = route.calls.last.request
    assert request.headers["x-api-key"] == KEY
    assert "authorization" not in request.headers
    assert balance.usd_balance == Decimal("129.46956147")
    assert balance.nano_balance == Decimal("26.7")


def test_missing_key_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("NANOGPT_API_KEY", raising=False)

    with pytest.raises(InvalidInputError, match="NANOGPT_API_KEY"):
        AsyncNanoGPT()


async def test_key_and_base_url_come_from_the_environment(monkeypatch, mock_api, png_b64):
    monkeypatch.setenv("NANOGPT_API_KEY", KEY)
    monkeypatch.setenv("NANOGPT_BASE_URL", "https://proxy.test/v1/")
    route = mock_api.post("https://proxy.test/v1/images/generations").respond(
        200, json=ok_body(png_b64)
    )

    async with AsyncNanoGPT() as client:
        await client.images.generate(prompt="x")

    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


def test_check_balance_url_is_derived_from_the_base_url():
    assert _api_root("https://nano-gpt.com/api/v1") == "https://nano-gpt.com/api"
    assert _api_root("https://nano-gpt.com/v1") == "https://nano-gpt.com/api"


def test_repr_hides_the_key():
    client = AsyncNanoGPT(api_key=KEY, base_url=BASE)

    assert KEY not in repr(client)
    assert KEY not in str(vars(client).get("images"))


def test_plain_http_to_a_remote_host_warns_but_loopback_does_not():
    with pytest.warns(UserWarning, match="plain http"):
        AsyncNanoGPT(api_key=KEY, base_url="http://api.example.com/v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AsyncNanoGPT(api_key=KEY, base_url="http://127.0.0.1:8000/api/v1")
        AsyncNanoGPT(api_key=KEY, base_url="http://localhost:8000/api/v1")


@pytest.mark.parametrize("bad", ["ftp://x/v1", "not a url", "https://"])
def test_unusable_base_url_is_refused(bad):
    with pytest.raises(InvalidInputError, match="base_url must be an http"):
        AsyncNanoGPT(api_key=KEY, base_url=bad)


async def test_with_options_overrides_per_call_and_shares_the_pool(client, mock_api, png_b64):
    route = mock_api.post(f"{BASE}/images/generations").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=ok_body(png_b64))]
    )

    strict = client.with_options(max_retries=0, timeout=5)
    with pytest.raises(Exception, match="503"):
        await strict.images.generate(prompt="x")
    await strict.aclose()  # a view: must not close the shared pool
    await client.images.generate(prompt="x")

    assert strict.retry_policy.max_retries == 0
    assert strict.timeout == httpx.Timeout(5)
    assert strict.channel.pools.api is client.channel.pools.api
    assert route.call_count == 2


async def test_per_call_timeout_reaches_the_request(client, mock_api, png_b64):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))

    await client.images.generate(prompt="x", timeout=12.5)

    assert route.calls.last.request.extensions["timeout"]["read"] == 12.5


async def test_a_user_supplied_http_client_is_used_and_not_closed(png_b64):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ok_body(png_b64))

    mine = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, http_client=mine) as client:
        await client.images.generate(prompt="x")

    assert len(seen) == 1
    assert not mine.is_closed
    await mine.aclose()


async def test_a_user_supplied_http_client_keeps_its_default_headers(png_b64):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ok_body(png_b64))

    mine = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), headers={"X-Proxy-Token": "proxy-secret"}
    )
    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, http_client=mine) as client:
        await client.images.generate(prompt="x")
    await mine.aclose()

    assert seen[0].headers["x-proxy-token"] == "proxy-secret"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


def test_max_retries_argument_overrides_the_policy():
    client = AsyncNanoGPT(
        api_key=KEY, base_url=BASE, max_retries=7, retry_policy=RetryPolicy(backoff_max=1)
    )

    assert client.retry_policy.max_retries == 7
    assert client.retry_policy.backoff_max == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"seed": 2**64}, r"seed must be from .* \(a 64-bit integer\)"),
        ({"seed": -(2**63) - 1}, "seed must be at least"),
        ({"seed": 10**30}, "seed must be from"),
        ({"n": 2**70}, "n must be from 1"),
        ({"extra_body": {"x": 2**64}}, r"extra_body\['x'\] must fit in 64 bits"),
        ({"extra_body": {"x": float("nan")}}, "must be a finite number"),
        ({"extra_body": {"x": [float("inf")]}}, "must be a finite number"),
        ({"extra_body": {"x": object()}}, "must be JSON data"),
        ({"extra_body": {1: "x"}}, "keys must be strings"),
    ],
)
async def test_values_json_cannot_carry_raise_invalid_input_not_type_error(
    client, mock_api, kwargs, fragment
):
    route = mock_api.post(f"{BASE}/images/generations")

    with pytest.raises(InvalidInputError, match=fragment):
        await client.images.generate(prompt="x", **kwargs)
    assert not route.called


async def test_64_bit_seed_extremes_are_sent(client, mock_api, png_b64):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64))

    await client.images.generate(prompt="x", seed=2**64 - 1)
    await client.images.generate(prompt="x", seed=-(2**63))

    assert [sent_json(route, i)["seed"] for i in range(2)] == [2**64 - 1, -(2**63)]


async def test_whole_number_floats_are_accepted_and_sent_as_json_integers(
    client, mock_api, png_b64
):
    route = mock_api.post(f"{BASE}/images/generations").respond(200, json=ok_body(png_b64, 2))

    await client.images.generate(prompt="x", n=2.0, seed=42.0, num_inference_steps=30.0)

    raw = route.calls.last.request.content
    assert b'"n":2' in raw.replace(b" ", b"")
    body = sent_json(route)
    assert (body["n"], body["seed"], body["num_inference_steps"]) == (2, 42, 30)
    assert all(type(body[k]) is int for k in ("n", "seed", "num_inference_steps"))


async def test_a_cookie_set_by_the_api_is_neither_parsed_nor_sent_back(
    client, mock_api, png_b64, monkeypatch
):
    def no_adapter(*_: object) -> None:
        raise AssertionError("httpx built its per-response cookie adapter")

    # Building it costs a URL parse and header copies per answer (W10 profile): never needed.
    monkeypatch.setattr(httpx.Cookies, "_CookieCompatRequest", no_adapter)
    route = mock_api.post(f"{BASE}/images/generations").respond(
        200, json=ok_body(png_b64), headers={"Set-Cookie": "session=abc; Path=/"}
    )

    await client.images.generate(prompt="a red fox")
    await client.images.generate(prompt="a blue jay")

    assert "cookie" not in route.calls.last.request.headers
