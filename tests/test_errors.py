"""Error bodies of every shape become useful, key-free messages on the right exception."""

from __future__ import annotations

import pickle

import httpx
import pytest

from nanogpt_async import (
    APIResponseValidationError,
    APIStatusError,
    AsyncNanoGPT,
    AuthenticationError,
    ContentPolicyViolationError,
    InsufficientBalanceError,
    InternalServerError,
    NanoGPTError,
)
from nanogpt_async._errors import parse_error_body, status_error
from tests.conftest import BASE, KEY

GEN = f"{BASE}/images/generations"


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            (
                b'{"error": {"message": "Invalid size", "type": "invalid_request_error",'
                b' "code": "bad_size", "param": "size"}}'
            ),
            "Invalid size",
            "bad_size",
        ),
        (
            b'{"error": "Insufficient balance", "status": 402, "requiredBalance": 0.0035}',
            "Insufficient balance",
            None,
        ),
        (b'{"error": 400, "message": "Prompt is required"}', "Prompt is required", None),
        (b'{"detail": "Not found"}', "Not found", None),
        (
            b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            "non-JSON response: 502 Bad Gateway",
            None,
        ),
        (b"", "empty response body", None),
        (b"upstream connect error", "non-JSON response: upstream connect error", None),
        (b"[1, 2]", "unrecognised error body: [1, 2]", None),
        (b'{"error": {}}', "unrecognised error body", None),
        (b"\xff\xfe\x00garbage", "non-JSON response", None),
    ],
)
def test_every_error_body_shape_yields_a_message(body, message, code):
    parsed_message, fields = parse_error_body(body)

    assert message in parsed_message
    assert fields.get("code") == code


async def test_status_error_carries_status_message_code_and_request_id(client, mock_api):
    mock_api.post(GEN).respond(
        402,
        json={"error": {"message": "Insufficient balance", "code": "insufficient_balance"}},
        headers={"X-Request-ID": "req_42"},
    )

    with pytest.raises(InsufficientBalanceError) as info:
        await client.images.generate(prompt="x")

    error = info.value
    assert (error.status_code, error.code, error.request_id) == (
        402,
        "insufficient_balance",
        "req_42",
    )
    assert str(error) == (
        "NanoGPT answered 402: Insufficient balance (code: insufficient_balance, "
        "request id: req_42). Top up the NanoGPT balance, or lower n/size/model cost"
    )


async def test_content_policy_violation_has_its_own_class(client, mock_api):
    mock_api.post(GEN).respond(
        400, json={"error": {"message": "refused", "code": "content_policy_violation"}}
    )

    with pytest.raises(ContentPolicyViolationError, match="content policy"):
        await client.images.generate(prompt="x")


async def test_an_html_proxy_page_becomes_a_readable_server_error(client, mock_api):
    mock_api.post(GEN).respond(
        502, text="<html><title>Bad Gateway</title></html>", headers={"content-type": "text/html"}
    )

    with pytest.raises(InternalServerError, match="non-JSON response: Bad Gateway"):
        await client.images.generate(prompt="x")


async def test_a_200_that_is_not_json_is_a_validation_error_that_warns_of_charges(client, mock_api):
    mock_api.post(GEN).respond(200, text="<html>oops</html>", headers={"X-Request-ID": "r1"})

    with pytest.raises(APIResponseValidationError, match="may have been charged") as info:
        await client.images.generate(prompt="x")

    assert info.value.request_id == "r1"


async def test_a_200_without_images_is_a_validation_error(client, mock_api):
    mock_api.post(GEN).respond(200, json={"data": [], "cost": 0.0})

    with pytest.raises(APIResponseValidationError, match="without any image"):
        await client.images.generate(prompt="x")


async def test_a_redirect_from_the_api_is_an_error_not_followed(client, mock_api):
    route = mock_api.post(GEN).respond(302, headers={"Location": "https://elsewhere.test/x"})
    elsewhere = mock_api.route(host="elsewhere.test")

    with pytest.raises(APIStatusError, match="302"):
        await client.images.generate(prompt="x")

    assert route.call_count == 1
    assert not elsewhere.called


async def test_the_key_never_appears_in_any_error_message_or_repr(mock_api):
    mock_api.post(GEN).respond(401, json={"error": {"message": f"bad key {KEY[:4]}..."}})
    mock_api.post(f"{BASE.rsplit('/', 1)[0]}/check-balance").mock(
        side_effect=httpx.ConnectError("refused")
    )

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE) as client:
        errors: list[BaseException] = []
        for call in (client.images.generate(prompt="x"), client.balance()):
            with pytest.raises(NanoGPTError) as info:
                await call
            errors.append(info.value)

    assert isinstance(errors[0], AuthenticationError)
    for error in errors:
        assert KEY not in str(error)
        assert KEY not in repr(error)
        assert KEY not in repr(vars(error))


def test_status_errors_survive_pickling():
    error = status_error(429, b'{"error": {"message": "slow down"}}', request_id="r", retry_after=2)

    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes

    assert type(copy) is type(error)
    assert (copy.status_code, copy.message, copy.request_id, copy.retry_after) == (
        429,
        "slow down",
        "r",
        2,
    )


@pytest.mark.parametrize(("status", "cls"), [(418, APIStatusError), (599, InternalServerError)])
def test_unknown_statuses_map_to_the_generic_classes(status, cls):
    assert type(status_error(status, b"")) is cls
