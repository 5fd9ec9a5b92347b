"""Error bodies of every shape become useful, key-free messages on the right exception."""

from __future__ import annotations

import datetime as dt
import pickle

import httpx
import pytest

from nanogpt_async import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    AsyncNanoGPT,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContentPolicyViolationError,
    DailyLimitExceededError,
    ImageDownloadError,
    InsufficientBalanceError,
    InternalServerError,
    NanoGPTError,
    PayloadTooLargeError,
    RateLimitError,
    RequestTimeoutError,
    UnprocessableEntityError,
)
from nanogpt_async._errors import (
    ERROR_SCAN_BYTES,
    parse_error_body,
    redact,
    redact_error,
    status_error,
)
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


# -- details pinned by mutation testing (docs/reliability.md, "Mutation testing") -------------


def test_a_request_id_is_quoted_once_in_an_errors_text() -> None:
    assert repr(APIError("boom", request_id="req-1")) == "APIError('boom')"
    assert str(APIError("boom", request_id="req-1")) == "boom (request id: req-1)"
    assert str(APIError("boom for req-1", request_id="req-1")) == "boom for req-1"
    assert str(APIError("boom")) == "boom"


def test_connection_and_download_errors_keep_what_they_were_given() -> None:
    error = APIConnectionError("reset", request_sent=True, request_id="req-2")
    assert (error.message, error.request_sent, error.request_id) == ("reset", True, "req-2")
    download = ImageDownloadError("gone", url="https://cdn.test/a.png", status_code=404)
    assert (download.url, download.status_code, str(download)) == (
        "https://cdn.test/a.png",
        404,
        "gone",
    )


def test_a_daily_cap_keeps_the_servers_message() -> None:
    error = status_error(429, b'{"code": "daily_rpd_limit_exceeded", "message": "Daily cap hit"}')
    assert isinstance(error, DailyLimitExceededError)
    assert error.message == "Daily cap hit"
    assert str(error).startswith("NanoGPT answered 429: Daily cap hit (code: daily_rpd_limit")


@pytest.mark.parametrize(
    ("page", "message"),
    [
        (  # an inline SVG's <title> further down is not the page's
            b"<html><head><title>502 Bad Gateway</title></head><svg><title>icon</title></svg>",
            "non-JSON response: 502 Bad Gateway",
        ),
        (
            b"<!-- stray </title> --><title>504 Gateway Time-out</title>",
            "non-JSON response: 504 Gateway Time-out",
        ),
        (b"x<title>520 Unknown error</title>", "non-JSON response: 520 Unknown error"),
        (b"<title>unterminated", "non-JSON response: <title>unterminated"),
    ],
)
def test_a_proxy_pages_first_whole_title_is_its_message(page: bytes, message: str) -> None:
    assert parse_error_body(page)[0] == message


def test_a_json_object_without_any_message_is_quoted_as_the_message() -> None:
    message, fields = parse_error_body(b'{"status": 500}')
    assert message == 'unrecognised error body: {"status": 500}'
    assert fields["body"] == {"status": 500}


def test_a_param_that_is_not_text_is_left_out() -> None:
    assert parse_error_body(b'{"error": {"message": "m", "param": 5}}')[1]["param"] is None
    assert parse_error_body(b'{"error": {"message": "m", "param": "size"}}')[1]["param"] == "size"


def test_a_key_anywhere_in_a_body_is_redacted_keys_of_objects_included() -> None:
    body = {"errors": [{"detail": f"bad key {KEY}"}, 3], f"echo {KEY}": "v", "n": None}
    error = redact_error(APIStatusError("m", status_code=401, body=body), [KEY])
    assert isinstance(error, APIStatusError)
    assert error.body == {
        "errors": [{"detail": "bad key <redacted>"}, 3],
        "echo <redacted>": "v",
        "n": None,
    }


@pytest.mark.parametrize("container", ["list", "object"])
def test_a_body_is_redacted_to_twenty_levels_deep_and_cut_below(container: str) -> None:
    def nested(levels: int) -> object:
        value: object = 1
        for _ in range(levels):
            value = [value] if container == "list" else {"k": value}
        return value

    def leaf(value: object) -> object:
        while isinstance(value, (list, dict)):
            value = value[0] if isinstance(value, list) else value["k"]
        return value

    kept = redact_error(APIStatusError("m", status_code=500, body=nested(20)), [KEY])
    cut = redact_error(APIStatusError("m", status_code=500, body=nested(21)), [KEY])
    assert isinstance(kept, APIStatusError)
    assert isinstance(cut, APIStatusError)
    assert (leaf(kept.body), leaf(cut.body)) == (1, "<redacted>")


def test_a_json_error_body_that_is_not_an_object_is_recognised_by_its_content_type() -> None:
    error = status_error(500, b'"busy"', content_type="application/json")
    assert error.message == 'unrecognised error body: "busy"'
    assert error.body == "busy"


def test_a_status_error_carries_the_bodys_type_param_and_parsed_body() -> None:
    body = b'{"error": {"message": "m", "type": "invalid_request_error", "param": "size"}}'
    error = status_error(400, body)
    assert (error.error_type, error.param) == ("invalid_request_error", "size")
    assert error.body == {
        "error": {"message": "m", "type": "invalid_request_error", "param": "size"}
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "Refused by policy", "type": "content_policy_violation"}}',
        b'{"error": {"message": "Refused by policy", "code": "content_policy_violation"}}',
    ],
)
def test_a_content_policy_refusal_is_recognised_by_its_type_or_code(body: bytes) -> None:
    error = status_error(400, body)
    assert type(error) is ContentPolicyViolationError
    assert error.message == "Refused by policy"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (0.5, dt.datetime(2026, 11, 24, 15, 30, 0, 750_000, tzinfo=dt.timezone.utc)),
        (None, dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)),
    ],
)
def test_a_daily_caps_reset_time_is_exact_to_the_microsecond(retry_after, expected) -> None:
    now = dt.datetime(2026, 11, 24, 15, 30, 0, 250_000, tzinfo=dt.timezone.utc)
    error = status_error(
        429, b'{"code": "daily_usd_limit_exceeded"}', retry_after=retry_after, now=now
    )
    assert isinstance(error, DailyLimitExceededError)
    assert error.resets_at == expected  # a sub-second Retry-After still counts; midnight is :00


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "", "empty response body"),
        (b"{not json", "", "non-JSON response: {not json"),
        (b"502", "", "non-JSON response: 502"),  # parsed as JSON only if it looks like JSON
        (b"502", "text/plain", "non-JSON response: 502"),
        (b"502", "application/json", "unrecognised error body: 502"),
        (b"[502]", "", "unrecognised error body: [502]"),
    ],
)
def test_an_error_body_is_parsed_as_json_only_when_it_looks_or_says_so(
    body: bytes, content_type: str, message: str
) -> None:
    assert parse_error_body(body, content_type)[0] == message


def test_an_error_body_is_parsed_as_json_up_to_the_scan_limit_and_never_past_it() -> None:
    json_error = b'{"error": {"message": "m"}}'
    at_limit = json_error + b" " * (ERROR_SCAN_BYTES - len(json_error))
    assert parse_error_body(at_limit)[0] == "m"
    # One byte more and only a prefix is seen: never parsed, even if the prefix is valid JSON.
    assert parse_error_body(at_limit + b"x")[0] == f"non-JSON response: {json_error.decode()}"


def test_a_text_error_bodys_message_is_cut_to_200_characters_of_its_first_1000() -> None:
    assert parse_error_body(b"<title>" + b"t" * 300 + b"</title>")[0] == (
        "non-JSON response: " + "t" * 200
    )
    assert parse_error_body(b"u" * 300)[0] == "non-JSON response: " + "u" * 200
    spaced = b"a" + b" " * 998 + b"bc"  # the 1000th character is the "b"
    assert parse_error_body(spaced)[0] == "non-JSON response: a b"


@pytest.mark.parametrize("word", ["Bearer", "bearer", "BEARER"])
def test_a_bearer_credential_is_redacted_whatever_its_case(word: str) -> None:
    assert redact(f"sent {word} abc.def-123, then", []) == "sent <redacted>, then"
