"""Conformance with NanoGPT's OpenAPI spec (``tests/vendor/nanogpt-openapi.json``).

* every request body the client can build, for generations and for edits, validates against
  the spec's request schema for that path (every combination of fields, each field's edge
  values, and a property test over arbitrary arguments);
* every answer the fake gives on those paths has the shape NanoGPT uses: the spec's response
  schema for 200, and the documented error bodies otherwise;
* a bounded schemathesis run: requests generated from the spec, valid and invalid, never crash
  the fake (no 5xx, always a JSON answer of a documented shape).

Where the spec and NanoGPT's documentation disagree, the tests follow the documentation and
say so where it happens.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanogpt_async import AsyncNanoGPT, InvalidInputError
from nanogpt_async._input._body import build_edit_body, build_generation_body
from nanogpt_async.testing import FakeNanoGPT, FakeServer, Fault, make_png
from nanogpt_async.testing._faults import Route
from tests._serving import TLS

SPEC_PATH = Path(__file__).resolve().parent / "vendor" / "nanogpt-openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text("utf-8"))
GENERATIONS, EDITS = "/v1/images/generations", "/v1/images/edits"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = make_png("conformance")
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    # The spec is OpenAPI 3.1, whose schemas are JSON Schema 2020-12; "$ref"s point into the
    # spec's components, so the components ride along in the root schema.
    return jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]})


def _request_validator(path: str) -> jsonschema.Draft202012Validator:
    content = SPEC["paths"][path]["post"]["requestBody"]["content"]
    return _validator(content["application/json"]["schema"])


def _response_validator(path: str, status: int) -> jsonschema.Draft202012Validator:
    content = SPEC["paths"][path]["post"]["responses"][str(status)]["content"]
    return _validator(content["application/json"]["schema"])


GENERATION_REQUEST = _request_validator(GENERATIONS)
EDIT_REQUEST = _request_validator(EDITS)
IMAGES_RESPONSE = {path: _response_validator(path, 200) for path in (GENERATIONS, EDITS)}

# The spec's "Error" schema for 400 is {"error": <int>, "message": <str>}. NanoGPT's docs (and
# its live answers) use the OpenAI error object, and the API notes list both; the fake follows
# the documentation, so errors are checked against the OpenAI shape.
OPENAI_ERROR = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "param"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    }
)
# 402: the spec says Error or the x402 quote; the docs show the legacy body the API sends for an
# authenticated caller out of money, which is what the fake sends.
LEGACY_402 = jsonschema.Draft202012Validator(
    {
        "type": "object",
        "required": ["error", "status", "requiredBalance"],
        "properties": {
            "error": {"type": "string"},
            "status": {"const": 402},
            "requiredBalance": {"type": "number"},
        },
    }
)


def check_answer(path: str, response: httpx.Response) -> None:
    """Assert ``response`` has a shape NanoGPT documents for ``path``."""
    assert response.status_code < 500 or response.status_code in {500, 502, 503}
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    assert response.headers.get("X-Request-ID")
    body = response.json()
    if response.status_code == 200:
        IMAGES_RESPONSE[path].validate(body)
    elif response.status_code == 402:
        LEGACY_402.validate(body)
    else:
        OPENAI_ERROR.validate(body)
    if response.status_code == 405:
        assert response.headers["Allow"]


# -- request bodies ---------------------------------------------------------------------------

# Each plain field's edge values; combinations cycle through them so every value is sent.
GENERATE_VALUES: dict[str, list[Any]] = {
    "model": ["hidream", "flux-lora/inpainting"],
    "n": [1, 4, 2.0],
    "size": ["1024x1024", "auto"],
    "response_format": ["url", "b64_json"],
    "user": ["user-1"],
    "strength": [0, 1, 0.5, 1.0],
    "guidance_scale": [0.0, 20, 7.5],
    "num_inference_steps": [1, 100, 30.0],
    "seed": [-(2**63), 2**64 - 1, 0, 42.0],
    "kontext_max_mode": [True, False],
}
EDIT_VALUES = {
    name: GENERATE_VALUES[name] for name in ("model", "n", "size", "response_format", "user")
}
IMAGE_VALUES: dict[str, Any] = {"image": PNG, "images": [PNG, PNG_URL], "mask": PNG_URL}


def _combinations(values: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = sorted(values)
    counter = itertools.count()
    for size in range(len(names) + 1):
        for chosen in itertools.combinations(names, size):
            turn = next(counter)
            yield {name: values[name][turn % len(values[name])] for name in chosen}


def _image_sets(*, edit: bool) -> list[dict[str, Any]]:
    sets = [
        {name: IMAGE_VALUES[name] for name in chosen}
        for size in range(4)
        for chosen in itertools.combinations(IMAGE_VALUES, size)
    ]
    # An edit needs an input image; the client refuses one without (tested in test_edits).
    return [s for s in sets if not edit or "image" in s or "images" in s]


#: The bodies validated so far in this process, as JSON, per schema. Validation depends on the
#: body alone, so where the other backend's run built the same body it is not validated again
#: (0.46 s of CPU for 8,192 bodies; conftest.py sends both runs to one worker).
VALIDATED: dict[str, set[str]] = {GENERATIONS: set(), EDITS: set()}


def validate_once(path: str, body: dict[str, Any]) -> None:
    """Validate ``body`` against ``path``'s request schema, unless this very body passed."""
    text = json.dumps(body, sort_keys=True)
    if text not in VALIDATED[path]:
        (GENERATION_REQUEST if path == GENERATIONS else EDIT_REQUEST).validate(body)
        VALIDATED[path].add(text)


def test_a_body_passes_validate_once_only_if_it_validates() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_once(GENERATIONS, {"prompt": "x", "n": "two"})
    with pytest.raises(jsonschema.ValidationError):
        validate_once(GENERATIONS, {"prompt": "x", "n": "two"})  # a failure is not remembered
    validate_once(GENERATIONS, {"prompt": "x", "n": 2})
    assert json.dumps({"n": 2, "prompt": "x"}) in VALIDATED[GENERATIONS]


async def test_every_generation_body_the_client_builds_validates_against_the_spec() -> None:
    count = 0
    for fields, images in itertools.product(
        _combinations(GENERATE_VALUES), _image_sets(edit=False)
    ):
        body = await build_generation_body({"prompt": "a red fox", **fields, **images})
        validate_once(GENERATIONS, body)
        count += 1
    assert count == 2**10 * 8


async def test_every_edit_body_the_client_builds_validates_against_the_spec() -> None:
    count = 0
    for fields, images in itertools.product(_combinations(EDIT_VALUES), _image_sets(edit=True)):
        body = await build_edit_body({"prompt": "make it snow", **fields, **images})
        # response_format and user are not in the edits schema, which allows more properties
        # (additionalProperties: true); they are the OpenAI-compatible delivery fields.
        validate_once(EDITS, body)
        count += 1
    assert count == 2**5 * 6


async def test_the_bodies_sent_on_the_wire_are_the_built_ones(mock_api: respx.MockRouter) -> None:
    answer = {"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode()}], "cost": 0.005}
    base = "https://nano-gpt.test/api/v1"
    generations = mock_api.post(f"{base}/images/generations").respond(200, json=answer)
    edits = mock_api.post(f"{base}/images/edits").respond(200, json=answer)
    everything = {name: values[-1] for name, values in GENERATE_VALUES.items()}

    async with AsyncNanoGPT(api_key=KEY, base_url=base) as client:
        await client.images.generate(prompt="x", **everything, **IMAGE_VALUES)
        await client.images.edit(prompt="x", **{k: everything[k] for k in EDIT_VALUES}, image=PNG)

    sent = json.loads(generations.calls.last.request.content)
    assert sent == await build_generation_body({"prompt": "x", **everything, **IMAGE_VALUES})
    GENERATION_REQUEST.validate(sent)
    EDIT_REQUEST.validate(json.loads(edits.calls.last.request.content))


_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["url", "b64_json", "1024x1024", "auto", "hidream"]),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={name: _anything for name in [*GENERATE_VALUES, "extra_body"] if name != "prompt"},
    ),
    edit=st.booleans(),
)
async def test_any_arguments_give_a_valid_body_or_invalid_input_error(
    fields: dict[str, Any], edit: bool
) -> None:
    # Nothing else may escape (no TypeError from the JSON encoder), and nothing invalid is built.
    build = build_edit_body if edit else build_generation_body
    try:
        body = await build({"prompt": "p", "image": PNG if edit else None, **fields})
    except InvalidInputError:
        return
    (EDIT_REQUEST if edit else GENERATION_REQUEST).validate(body)
    json.dumps(body, allow_nan=False)  # strict JSON: no NaN, no Infinity


# -- what the fake answers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeNanoGPT(api_key=KEY, balance=1.0).run_in_thread() as running:
        yield running


def _scenarios() -> list[tuple[str, str, dict[str, Any], dict[str, str] | None, str]]:
    """(label, path, body, headers, what to do first) for every kind of answer."""
    gen, edit = GENERATIONS, EDITS
    image = {"model": "flux-kontext", "imageDataUrl": PNG_URL}
    big = "data:image/png;base64," + "A" * (4 * 1024 * 1024)
    return [
        ("200 b64", gen, {"prompt": "x", "n": 2}, None, ""),
        ("200 url", gen, {"prompt": "x", "response_format": "url"}, None, ""),
        ("200 url fallback", gen, {"prompt": "x", "n": 4, "response_format": "url"}, None, "half"),
        ("200 edit", edit, {"prompt": "x", **image}, None, ""),
        ("200 edit url", edit, {"prompt": "x", **image, "response_format": "url"}, None, ""),
        ("200 empty data", gen, {"prompt": "x"}, None, "empty"),
        ("400 rule", gen, {"prompt": "x", "size": "13x13"}, None, ""),
        ("400 edit rule", edit, {"prompt": "x"}, None, ""),
        ("400 policy", gen, {"prompt": "forbidden"}, None, ""),
        ("400 type", gen, {"prompt": "x", "n": "2"}, None, ""),
        ("401 missing", gen, {"prompt": "x"}, {}, ""),
        ("401 invalid", edit, {"prompt": "x", **image}, {"x-api-key": "no"}, ""),
        ("402", gen, {"prompt": "x", "n": 4}, None, "poor"),
        ("404", gen, {"prompt": "x", "model": "nope"}, None, ""),
        ("413", edit, {"prompt": "x", "model": "flux-kontext", "imageDataUrl": big}, None, ""),
        ("429", gen, {"prompt": "x"}, None, "rate"),
        ("429 daily", edit, {"prompt": "x", **image}, None, "daily"),
        ("503", gen, {"prompt": "x"}, None, "503"),
    ]


@pytest.mark.parametrize(
    ("status", "path", "body", "headers", "setup"),
    [pytest.param(int(label.split()[0]), *rest, id=label) for label, *rest in _scenarios()],
)
def test_every_kind_of_answer_the_fake_gives_has_a_documented_shape(
    server: FakeServer,
    *,
    status: int,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    setup: str,
) -> None:
    fake = server.fake
    fake.balance, fake.url_fallback_rate = 1.0, 0.0
    route: Route = "edits" if path == EDITS else "generations"
    if setup == "half":
        fake.url_fallback_rate = 0.5
    elif setup == "poor":
        fake.balance = 0.001
    elif setup == "empty":
        fake.enqueue(Fault.empty_data(), route=route)
    elif setup == "rate":
        fake.enqueue(Fault.rate_limited(), route=route)
    elif setup == "daily":
        fake.enqueue(Fault.daily_cap("usd"), route=route)
    elif setup == "503":
        fake.enqueue(Fault.status(503), route=route)

    response = httpx.post(
        f"{server.root_url}/api{path}", json=body, headers=AUTH if headers is None else headers
    )

    assert response.status_code == status
    check_answer(path, response)


def test_405_and_unknown_paths_answer_documented_json_shapes(server: FakeServer) -> None:
    for path in (GENERATIONS, EDITS):
        check_answer(path, httpx.get(f"{server.root_url}/api{path}", verify=TLS))
    nope = f"{server.root_url}/api/v1/images/nope"
    check_answer(GENERATIONS, httpx.post(nope, headers=AUTH, verify=TLS))


# -- schemathesis: generated requests, valid and invalid ---------------------------------------


@pytest.fixture(scope="module")
def generated_requests() -> Callable[[str, str], Any]:
    """Hypothesis's strategy of requests schemathesis generates from the spec for a path, mode.

    The spec is loaded by the tests that use it, not on import: every xdist worker imports
    this module, and importing schemathesis and loading the spec cost each 0.28 s of CPU.
    """
    schemathesis = pytest.importorskip("schemathesis")
    spec = schemathesis.openapi.from_dict(SPEC)

    def strategy(path: str, mode: str) -> Any:
        generation_mode = schemathesis.generation.GenerationMode(mode)
        return spec[path]["POST"].as_strategy(generation_mode=generation_mode)

    return strategy


@pytest.mark.parametrize("path", [GENERATIONS, EDITS])
@pytest.mark.parametrize("mode", ["positive", "negative"], ids=["valid", "invalid"])
def test_generated_requests_never_crash_the_fake(
    server: FakeServer, generated_requests: Callable[[str, str], Any], path: str, mode: str
) -> None:
    # Bounded (40 examples, a fixed seed) to keep the suite fast: about 160 requests in all.
    server.fake.balance = 1_000_000.0
    server.fake.reset_stats()
    seen: dict[int, int] = {}

    with httpx.Client(base_url=f"{server.root_url}/api", timeout=10, verify=TLS) as http:

        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=generated_requests(path, mode))
        def run(case: Any) -> None:
            if isinstance(case.body, (bytes, str)):
                content = case.body if isinstance(case.body, bytes) else case.body.encode()
            else:
                content = json.dumps(case.body).encode()
            headers = {**AUTH, **(case.headers or {}), "Content-Type": "application/json"}
            response = http.post(path, content=content, headers=headers)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, response.text[:300]
            check_answer(path, response)

        run()

    assert sum(seen.values()) >= 1
    assert server.fake.stats.errors_sent == 0
