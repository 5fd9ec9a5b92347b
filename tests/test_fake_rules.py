"""The fake refuses what NanoGPT refuses: per-model rules, edits, strict JSON, auth codes.

Plain httpx against the fake, so these tests are about the server, not our client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nanogpt_async import ImageModel
from nanogpt_async.testing import FakeNanoGPT, FakeServer, Fault, make_png
from tests._serving import TLS

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG_URL = "data:image/png;base64," + base64.b64encode(make_png("input")).decode()
LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    # One server for the module (these tests only read stats they reset): keeps the file fast.
    with FakeNanoGPT(api_key=KEY).run_in_thread() as running:
        yield running


@pytest.fixture
def http(server: FakeServer) -> Iterator[httpx.Client]:
    server.fake.reset_stats()
    server.fake.clear_faults()
    with httpx.Client(base_url=server.base_url, timeout=5, verify=TLS) as client:
        yield client


def post(
    http: httpx.Client, body: Any, *, path: str = "/images/generations", **kwargs: Any
) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    if isinstance(body, (str, bytes)):
        return http.post(path, content=body, headers=headers, **kwargs)
    return http.post(path, json=body, headers=headers, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def catalogue(http: httpx.Client) -> dict[str, ImageModel]:
    data = http.get("/image-models", params={"detailed": "true"}).json()["data"]
    return {item["id"]: ImageModel.from_api(item) for item in data}


# -- per-model rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        # The inpainting guide: flux-lora/inpainting needs both an image and a mask.
        (
            {"model": "flux-lora/inpainting", "imageDataUrl": PNG_URL},
            "maskDataUrl",
            "needs both an input image and a mask",
        ),
        ({"model": "flux-lora/inpainting"}, "imageDataUrl", "needs an input image"),
        # hidream is text-only in the catalogue.
        ({"imageDataUrl": PNG_URL}, "imageDataUrl", "does not take input images"),
        ({"imageDataUrls": [PNG_URL]}, "imageDataUrl", "does not take input images"),
        (
            {"model": "flux-kontext", "imageDataUrl": PNG_URL, "maskDataUrl": PNG_URL},
            "maskDataUrl",
            "does not take a mask",
        ),
        ({"model": "gpt-image-1", "maskDataUrl": PNG_URL}, "maskDataUrl", "needs an input image"),
        ({"size": "13x13"}, "size", "is not supported by model 'hidream'"),
        ({"size": "not-a-size"}, "size", "supported: 1024x1024"),
        ({"size": "4096x4096"}, "size", "is not supported"),
        ({"model": "hidream", "size": "auto"}, "size", "is not supported"),
        ({"model": "flux-kontext", "n": 2}, "n", "at most 1"),
        ({"n": 5}, "n", "at most 4"),
    ],
)
def test_requests_breaking_a_models_catalogue_entry_get_400_and_no_charge(
    http: httpx.Client, server: FakeServer, body: dict[str, Any], param: str, fragment: str
) -> None:
    response = post(http, {"prompt": "x", **body})

    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_value",
        param,
    )
    assert fragment in error["message"]
    assert server.fake.stats.charged_usd == 0
    assert server.fake.stats.statuses == {400: 1}


def test_inpainting_with_image_and_mask_is_charged(http: httpx.Client, server: FakeServer) -> None:
    body = {
        "prompt": "fill",
        "model": "flux-lora/inpainting",
        "imageDataUrl": PNG_URL,
        "maskDataUrl": PNG_URL,
        "size": "768x1024",
    }
    response = post(http, body)

    assert response.status_code == 200
    assert server.fake.stats.images_generated == 1


def test_the_image_models_answer_and_the_rules_agree_for_every_model_and_size(
    http: httpx.Client,
) -> None:
    # One table drives both: whatever /image-models says is what the fake enforces.
    for model in catalogue(http).values():
        caps = model.capabilities
        base: dict[str, Any] = {"prompt": "x", "model": model.id}
        if caps.image_to_image:
            base["imageDataUrl"] = PNG_URL
        if caps.inpainting and not caps.image_generation:
            base["maskDataUrl"] = PNG_URL
        for size in model.resolutions:
            assert post(http, {**base, "size": size}).status_code == 200, (model.id, size)
        assert post(http, {**base, "size": "999x999"}).status_code == 400
        assert model.max_images is not None
        assert post(http, {**base, "n": model.max_images}).status_code == 200
        assert post(http, {**base, "n": model.max_images + 1}).status_code == 400
        with_image = {**base, "imageDataUrl": PNG_URL}
        assert (post(http, with_image).status_code == 200) is caps.image_to_image, model.id
        without_image = {k: v for k, v in base.items() if k not in {"imageDataUrl", "maskDataUrl"}}
        assert (post(http, without_image).status_code == 200) is caps.image_generation, model.id


def test_fixed_image_count_is_an_integer_in_the_catalogue_and_in_image_model(
    http: httpx.Client,
) -> None:
    data = http.get("/image-models", params={"detailed": "true"}).json()["data"]
    fixed = {
        item["id"]: item["supported_parameters"]["fixed_image_count"]
        for item in data
        if "fixed_image_count" in item["supported_parameters"]
    }
    assert fixed == {"flux-kontext": 1}
    assert all(type(value) is int for value in fixed.values())
    assert catalogue(http)["flux-kontext"].fixed_image_count == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (4, 4), ("2", 2), (2.0, 2), (True, 4), (False, None), (0, None), ("x", None)],
)
def test_image_model_parses_fixed_image_count_liberally(
    value: object, expected: int | None
) -> None:
    # True (a count fixed at the model's maximum, as a bool-sending server means it) -> max_images.
    model = ImageModel.from_api(
        {"id": "m", "supported_parameters": {"max_images": 4, "fixed_image_count": value}}
    )
    assert model.fixed_image_count == expected
    assert model.fixed_image_count is None or type(model.fixed_image_count) is int


# -- the 4 MB rule, after encoding ----------------------------------------------------------


def test_a_3_6_mib_image_is_a_5_mb_data_url_and_gets_413(
    http: httpx.Client, server: FakeServer
) -> None:
    raw = b"\0" * int(3.6 * 1024 * 1024)
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    response = post(http, {"prompt": "x", "model": "gpt-image-1", "imageDataUrl": url})

    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert server.fake.stats.charged_usd == 0


def test_a_data_url_of_exactly_4_mib_is_accepted_one_more_byte_is_not(http: httpx.Client) -> None:
    prefix = "data:image/png;base64,"
    payload = base64.b64encode(b"\0" * ((LIMIT - len(prefix)) // 4 * 3)).decode()
    url = prefix + payload + "=" * 0
    url = url + "A" * ((LIMIT - len(url)) // 4 * 4)  # whole base64 quanta, still valid
    assert LIMIT - 4 < len(url) <= LIMIT
    body = {"prompt": "x", "model": "gpt-image-1"}
    assert post(http, {**body, "imageDataUrl": url}).status_code == 200
    over = prefix + "A" * ((LIMIT - len(prefix)) // 4 * 4 + 4)
    assert post(http, {**body, "imageDataUrl": over}).status_code == 413


# -- JSON that NanoGPT's parser refuses --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"prompt": "x", "strength": NaN}',
        '{"prompt": "x", "guidance_scale": Infinity}',
        '{"prompt": "x", "seed": -Infinity}',
        '{"prompt": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"prompt": "x", "extra": ' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}",
    ],
    ids=["nan", "infinity", "minus-infinity", "deep-array", "deep-object"],
)
def test_bodies_json_does_not_allow_get_a_json_400_counted_in_stats(
    http: httpx.Client, server: FakeServer, raw: str
) -> None:
    response = post(http, raw, headers={**AUTH, "Content-Type": "application/json"})

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert server.fake.stats.statuses == {400: 1}
    assert server.fake.stats.charged_usd == 0


@pytest.mark.parametrize("path", ["/images/generations", "/images/edits"])
def test_405_answers_keep_the_allow_header(http: httpx.Client, path: str) -> None:
    response = http.get(path, headers=AUTH)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert error_of(response)["code"] == "invalid_request"


def test_whole_number_floats_count_as_integers(http: httpx.Client, server: FakeServer) -> None:
    body = {"prompt": "x", "n": 2.0, "seed": 42.0, "num_inference_steps": 30.0}
    response = post(http, body)

    assert response.status_code == 200
    assert len(response.json()["data"]) == 2
    assert server.fake.stats.images_generated == 2
    assert post(http, {"prompt": "x", "n": 1.5}).status_code == 400
    assert post(http, {"prompt": "x", "seed": 0.5}).status_code == 400


# -- edits -------------------------------------------------------------------------------------

EDIT = {"prompt": "make it snow", "model": "flux-kontext", "imageDataUrl": PNG_URL}


@pytest.mark.parametrize("v1", [False, True])
@pytest.mark.parametrize("auth", ["bearer", "x-api-key"])
def test_edits_answer_the_generations_shape_on_both_bases_with_either_key_header(
    server: FakeServer, v1: bool, auth: str
) -> None:
    base = server.v1_base_url if v1 else server.base_url
    headers = AUTH if auth == "bearer" else {"x-api-key": KEY}
    server.fake.reset_stats()

    response = httpx.post(f"{base}/images/edits", json=EDIT, headers=headers, timeout=5)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"created", "data", "cost", "paymentSource", "remainingBalance"}
    assert [set(item) for item in body["data"]] == [{"b64_json"}]
    stats = server.fake.stats
    assert (stats.edit_requests, stats.generation_requests, stats.images_generated) == (1, 1, 1)
    assert stats.charged_usd == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"x-api-key": ""}, "missing_api_key"),
        ({"x-api-key": "wrong"}, "invalid_api_key"),
        ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
    ],
)
def test_edits_without_a_good_key_get_401_missing_or_invalid_api_key(
    http: httpx.Client, server: FakeServer, headers: dict[str, str], code: str
) -> None:
    response = post(http, EDIT, path="/images/edits", headers=headers)

    assert response.status_code == 401
    assert error_of(response)["code"] == code
    assert server.fake.stats.charged_usd == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "model": "flux-kontext"}, "imageDataUrl"),
        ({"prompt": "x", "model": "flux-kontext", "imageDataUrls": []}, "imageDataUrl"),
        ({"prompt": "x", "imageDataUrl": PNG_URL}, "imageDataUrl"),  # default model: text-only
        ({"prompt": "x", "model": "flux-lora/inpainting", "imageDataUrl": PNG_URL}, "maskDataUrl"),
        ({**EDIT, "size": "13x13"}, "size"),
        ({**EDIT, "imageDataUrl": "https://example.com/cat.png"}, "imageDataUrl"),
        ({"model": "flux-kontext", "imageDataUrl": PNG_URL}, "prompt"),
    ],
)
def test_edits_refuse_what_nanogpt_refuses(
    http: httpx.Client, server: FakeServer, body: dict[str, Any], param: str
) -> None:
    response = post(http, body, path="/images/edits")

    assert response.status_code == 400
    assert error_of(response)["param"] == param
    assert server.fake.stats.charged_usd == 0


def test_edit_faults_queue_on_their_own_route(http: httpx.Client, server: FakeServer) -> None:
    server.fake.enqueue(Fault.status(503), route="edits")

    assert post(http, {"prompt": "x"}).status_code == 200  # generations: not spoiled
    assert post(http, EDIT, path="/images/edits").status_code == 503
    assert post(http, EDIT, path="/images/edits").status_code == 200


def test_edit_with_several_input_images_and_a_mask_on_gpt_image_1(http: httpx.Client) -> None:
    body = {
        "prompt": "combine",
        "model": "gpt-image-1",
        "imageDataUrls": [PNG_URL, PNG_URL],
        "maskDataUrl": PNG_URL,
        "n": 2,
        "size": "1536x1024",
        "response_format": "url",
    }
    response = post(http, body, path="/images/edits")

    assert response.status_code == 200
    assert [set(item) for item in response.json()["data"]] == [{"url"}, {"url"}]
    assert json.loads(response.content)["cost"] == pytest.approx(0.01)


# -- multipart edits (what the OpenAI SDK sends) -----------------------------------------------


def test_a_multipart_edit_is_converted_and_checked_like_json(
    http: httpx.Client, server: FakeServer
) -> None:
    png = make_png("photo")
    files = [("image[]", ("a.png", png, "image/png")), ("image[]", ("b.png", png, "image/png"))]
    fields = {"prompt": "merge", "model": "gpt-image-1", "n": "2", "size": "1024x1024"}

    response = http.post("/images/edits", data=fields, files=files, headers=AUTH)
    not_an_image = http.post(
        "/images/edits",
        data={"prompt": "x", "model": "flux-kontext"},
        files={"image": ("a.txt", b"hello", "text/plain")},
        headers=AUTH,
    )
    no_key = http.post("/images/edits", data=fields, files=files)

    assert response.status_code == 200
    assert len(response.json()["data"]) == 2
    assert not_an_image.status_code == 400
    assert error_of(not_an_image)["param"] == "imageDataUrl"
    assert no_key.status_code == 401
    assert server.fake.stats.images_generated == 2


async def test_the_openai_sdk_edits_images_on_the_fake(server: FakeServer) -> None:
    openai = pytest.importorskip("openai")
    png = make_png("photo")
    server.fake.reset_stats()

    async with openai.AsyncOpenAI(api_key=KEY, base_url=server.v1_base_url) as sdk:
        edited = await sdk.images.edit(
            image=("photo.png", png, "image/png"),
            mask=("mask.png", png, "image/png"),
            prompt="a red balloon",
            model="flux-lora/inpainting",
        )
        with pytest.raises(openai.BadRequestError, match="needs both an input image and a mask"):
            await sdk.images.edit(
                image=("photo.png", png, "image/png"), prompt="x", model="flux-lora/inpainting"
            )

    assert edited.data is not None
    assert edited.data[0].b64_json is not None
    assert base64.b64decode(edited.data[0].b64_json).startswith(b"\x89PNG")
    assert (server.fake.stats.edit_requests, server.fake.stats.generations) == (2, 1)
