"""Error bodies of every shape become useful, key-free messages on the right exception."""

from __future__ import annotations

import datetime as dt
import pickle

import httpx
import pytest

from nanogpt_async import (
    APIResponseValidationError,
    APIStatusError,
    AsyncNanoGPT,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContentPolicyViolationError,
    DailyLimitExceededError,
    InsufficientBalanceError,
    InternalServerError,
    NanoGPTError,
    PayloadTooLargeError,
    RateLimitError,
    RequestTimeoutError,
    UnprocessableEntityError,
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


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (408, RequestTimeoutError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, UnprocessableEntityError),
        (423, APIStatusError),
        (429, RateLimitError),
        (500, InternalServerError),
    ],
)
def test_each_status_has_its_exact_class(status, cls):
    assert type(status_error(status, b'{"error": {"message": "m"}}')) is cls


@pytest.mark.parametrize(
    ("body", "message", "fields"),
    [
        (
            b'{"error": {"detail": "from detail", "type": "invalid_request_error"}}',
            "from detail",
            {"type": "invalid_request_error", "code": None},
        ),
        (
            b'{"error": {"message": "m", "code": 400}, "code": "bad_size"}',
            "m",
            {"code": "bad_size"},
        ),
        (b'{"error": {"message": "m", "code": 400}}', "m", {"code": "400"}),
        (b'{"error": {"message": "m"}, "code": "top_level"}', "m", {"code": "top_level"}),
        (b'{"error": "legacy", "code": "legacy_code"}', "legacy", {"code": "legacy_code"}),
        (b'{"message": "bare message", "type": "t"}', "bare message", {"type": "t"}),
        (b'{"detail": "bare detail"}', "bare detail", {}),
        (b'{"error_description": "oauth style"}', "oauth style", {}),
        (b'{"error": "  ", "message": "fallback"}', "fallback", {}),
    ],
)
def test_error_body_message_code_and_type_fall_back_in_order(body, message, fields):
    parsed_message, parsed = parse_error_body(body)

    assert parsed_message == message
    for name, value in fields.items():
        assert parsed.get(name) == value


@pytest.mark.parametrize(
    "body",
    [
        b'{"code": "daily_rpd_limit_exceeded", "message": "Daily request limit"}',
        b'{"error": {"message": "Daily cap", "code": 429}, "code": "daily_rpd_limit_exceeded"}',
        (
            b'{"error": {"message": "Daily cap", "code": "rate_limit_exceeded"},'
            b' "code": "daily_usd_limit_exceeded"}'
        ),
        b'{"error": {"message": "Daily cap", "type": "daily_usd_limit_exceeded"}}',
        b'{"error": "Daily cap", "code": "daily_usd_limit_exceeded"}',
    ],
)
def test_a_daily_cap_is_recognised_wherever_its_code_sits(body):
    assert isinstance(status_error(429, body), DailyLimitExceededError)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (7200, dt.datetime(2026, 11, 24, 17, 30, tzinfo=dt.timezone.utc)),
        (None, dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)),
        (0, dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)),  # 0 is not "reset now"
    ],
)
def test_a_daily_cap_resets_after_retry_after_or_else_at_the_next_utc_midnight(
    retry_after, expected
):
    now = dt.datetime(2026, 11, 24, 15, 30, tzinfo=dt.timezone.utc)
    body = b'{"code": "daily_rpd_limit_exceeded"}'

    error = status_error(429, body, retry_after=retry_after, now=now)

    assert isinstance(error, DailyLimitExceededError)
    assert error.resets_at == expected


def test_a_huge_pathological_error_page_is_parsed_in_bounded_linear_time():
    # 2.1 MB of unclosed <title> tags: the old regex's lazy search restarted at every one of
    # them (400 KB took 64 s; this would take hours). The per-test timeout fails a regression.
    page = b"<html><title>" * 160_000

    message, fields = parse_error_body(page)

    assert message.startswith("non-JSON response")
    assert len(fields["body"]) <= 300


def test_an_html_title_is_still_found_near_the_top_of_a_huge_page():
    page = b"<html><head><title>521 Web server is down</title></head>" + b"x" * 5_000_000

    message, _ = parse_error_body(page)

    assert message == "non-JSON response: 521 Web server is down"


def test_a_huge_json_error_body_is_not_parsed_past_the_bounded_prefix():
    body = b'{"error": {"message": "' + b"a" * 1_000_000 + b'"}}'

    message, _ = parse_error_body(body)

    assert message.startswith("non-JSON response")
