"""The retry engine: what is retried, how long it waits, and what is never retried."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from nanogpt_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncNanoGPT,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DailyLimitExceededError,
    InsufficientBalanceError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
)
from nanogpt_async._errors import status_error
from nanogpt_async._http._retry import backoff_seconds, parse_retry_after, should_retry
from tests.conftest import BASE, KEY

GEN = f"{BASE}/images/generations"


def ok(png_b64: str) -> httpx.Response:
    return httpx.Response(200, json={"data": [{"b64_json": png_b64}], "cost": 0.005})


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (408, RequestTimeoutError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
    ],
)
async def test_transient_statuses_are_retried_until_success(
    client, mock_api, png_b64, status, error
):
    # NanoGPT's own (JSON) error answers; a gateway's page on a paid POST is not retried
    # (tests/test_hostile_http.py::test_a_gateway_page_on_a_paid_post_is_not_retried...).
    answer = httpx.Response(status, json={"error": {"message": "try again"}})
    route = mock_api.post(GEN).mock(side_effect=[answer, ok(png_b64)])

    response = await client.images.generate(prompt="x")

    assert route.call_count == 2
    assert len(response.data) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientBalanceError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
    ],
)
async def test_permanent_statuses_are_raised_after_one_attempt(client, mock_api, status, error):
    route = mock_api.post(GEN).respond(status, json={"error": {"message": "nope"}})

    with pytest.raises(error, match="nope"):
        await client.images.generate(prompt="x")

    assert route.call_count == 1


async def test_exhausted_retries_raise_the_last_error(client, mock_api):
    route = mock_api.post(GEN).respond(503, json={"error": {"message": "overloaded"}})

    with pytest.raises(InternalServerError, match="overloaded") as info:
        await client.images.generate(prompt="x")

    assert route.call_count == client.retry_policy.max_retries + 1
    assert info.value.status_code == 503


async def test_retry_after_seconds_is_honoured(client, mock_api, png_b64, instant_backoff):
    mock_api.post(GEN).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3"}), ok(png_b64)]
    )

    await client.images.generate(prompt="x")

    [wait] = instant_backoff
    assert 3.0 <= wait <= 3.3  # the server's wait plus at most 10% jitter


async def test_retry_after_ms_is_preferred(client, mock_api, png_b64, instant_backoff):
    mock_api.post(GEN).mock(
        side_effect=[
            httpx.Response(503, headers={"retry-after-ms": "250", "Retry-After": "9"}),
            ok(png_b64),
        ]
    )

    await client.images.generate(prompt="x")

    [wait] = instant_backoff
    assert 0.25 <= wait <= 0.3


async def test_retry_after_http_date_is_honoured(client, mock_api, png_b64, instant_backoff):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20)
    mock_api.post(GEN).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": email.utils.format_datetime(when)}),
            ok(png_b64),
        ]
    )

    await client.images.generate(prompt="x")

    [wait] = instant_backoff
    assert 17 <= wait <= 22


async def test_a_retry_after_beyond_the_cap_is_raised_not_slept_on(client, mock_api):
    route = mock_api.post(GEN).respond(429, headers={"Retry-After": "3600"})

    with pytest.raises(RateLimitError) as info:
        await client.images.generate(prompt="x")

    assert route.call_count == 1
    assert info.value.retry_after == 3600


async def test_daily_cap_is_not_retried_and_says_when_it_resets(client, mock_api):
    route = mock_api.post(GEN).respond(
        429,
        json={"error": {"message": "Daily limit", "code": "daily_usd_limit_exceeded"}},
        headers={"Retry-After": "7200", "X-Request-ID": "req_cap"},
    )
    before = dt.datetime.now(dt.timezone.utc)

    with pytest.raises(DailyLimitExceededError) as info:
        await client.images.generate(prompt="x")

    assert route.call_count == 1
    error = info.value
    assert before + dt.timedelta(seconds=7199) <= error.resets_at
    assert error.resets_at <= before + dt.timedelta(seconds=7300)
    assert "resets at" in str(error)
    assert "req_cap" in str(error)
    assert isinstance(error, RateLimitError)


async def test_daily_cap_without_retry_after_resets_at_next_utc_midnight(client, mock_api):
    mock_api.post(GEN).respond(429, json={"error": {"code": "daily_rpd_limit_exceeded"}})

    with pytest.raises(DailyLimitExceededError) as info:
        await client.images.generate(prompt="x")

    resets = info.value.resets_at
    assert (resets.hour, resets.minute, resets.second) == (0, 0, 0)
    assert resets > dt.datetime.now(dt.timezone.utc)


async def test_backoff_without_retry_after_is_full_jitter_exponential(
    client, mock_api, instant_backoff
):
    mock_api.post(GEN).respond(500)
    policy = client.retry_policy

    with pytest.raises(InternalServerError):
        await client.images.generate(prompt="x")

    assert len(instant_backoff) == policy.max_retries
    for number, wait in enumerate(instant_backoff, start=1):
        assert 0 <= wait <= min(policy.backoff_max, policy.backoff_initial * 2 ** (number - 1))


def test_backoff_ceiling_is_capped():
    policy = RetryPolicy(backoff_initial=1, backoff_max=4)

    assert all(backoff_seconds(policy, 10, None) <= 4 for _ in range(200))


async def test_connection_refused_is_retried_because_nothing_was_sent(client, mock_api, png_b64):
    route = mock_api.post(GEN).mock(side_effect=[httpx.ConnectError("refused"), ok(png_b64)])

    await client.images.generate(prompt="x")

    assert route.call_count == 2


async def test_pool_timeout_is_retried_because_nothing_was_sent(client, mock_api, png_b64):
    route = mock_api.post(GEN).mock(side_effect=[httpx.PoolTimeout("busy"), ok(png_b64)])

    await client.images.generate(prompt="x")

    assert route.call_count == 2


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ReadTimeout("slow"), APITimeoutError),
        (httpx.RemoteProtocolError("reset mid-response"), APIConnectionError),
        (httpx.ReadError("connection reset"), APIConnectionError),
    ],
)
async def test_a_paid_post_that_may_have_reached_the_server_is_not_retried_by_default(
    client, mock_api, failure, error
):
    route = mock_api.post(GEN).mock(side_effect=failure)

    with pytest.raises(error, match="may have been charged") as info:
        await client.images.generate(prompt="x")

    assert route.call_count == 1
    assert info.value.request_sent is True


async def test_retry_ambiguous_opts_into_retrying_paid_posts(mock_api, png_b64):
    route = mock_api.post(GEN).mock(side_effect=[httpx.ReadTimeout("slow"), ok(png_b64)])
    policy = RetryPolicy(retry_ambiguous=True)

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, retry_policy=policy) as client:
        await client.images.generate(prompt="x")

    assert route.call_count == 2


async def test_idempotent_calls_are_retried_after_a_read_timeout(client, mock_api):
    route = mock_api.get(f"{BASE}/image-models").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={"data": []})]
    )

    assert await client.images.models() == []
    assert route.call_count == 2


async def test_max_retries_zero_means_one_attempt(mock_api):
    route = mock_api.post(GEN).respond(503)

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, max_retries=0) as client:
        with pytest.raises(InternalServerError):
            await client.images.generate(prompt="x")

    assert route.call_count == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({}, None),
    ],
)
def test_retry_after_parsing_is_liberal_and_never_negative(headers, expected):
    assert parse_retry_after(httpx.Headers(headers)) == expected


def test_a_negative_retry_setting_is_refused():
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RetryPolicy(max_retries=-1)


@pytest.mark.parametrize("setting", ["backoff_initial", "backoff_max", "retry_after_max"])
def test_a_negative_wait_setting_is_refused_naming_the_three(setting):
    message = "backoff_initial, backoff_max and retry_after_max must be >= 0"
    negative: dict[str, Any] = {setting: -0.5}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RetryPolicy(**negative)


def test_zero_waits_and_zero_retries_are_valid_settings():
    policy = RetryPolicy(max_retries=0, backoff_initial=0, backoff_max=0, retry_after_max=0)
    assert (policy.backoff_initial, policy.backoff_max, policy.retry_after_max) == (0, 0, 0)
    assert RetryPolicy(retry_after_max=0.5).retry_after_max == 0.5  # under a second is fine


async def test_instant_retries_is_the_public_switch_for_users_test_suites(
    client, mock_api, png_b64
):
    from nanogpt_async.testing import instant_retries

    mock_api.post(GEN).mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "30"}), ok(png_b64)]
    )

    with instant_retries() as waits:
        await client.images.generate(prompt="x")

    assert len(waits) == 1
    assert waits[0] >= 30


def _top_of_range(_low: float, high: float) -> float:
    return high


def test_backoff_doubles_from_the_initial_ceiling_and_is_capped(monkeypatch):
    # Full jitter draws uniform(0, ceiling): a fake random returning the top shows the ceiling.
    monkeypatch.setattr(random, "uniform", _top_of_range)
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=8.0)

    ceilings = [backoff_seconds(policy, number, None) for number in range(1, 8)]

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_the_waits_between_attempts_follow_the_backoff_sequence(
    mock_api, png_b64, instant_backoff, monkeypatch
):
    monkeypatch.setattr(random, "uniform", _top_of_range)
    error = httpx.Response(500, json={"error": {"message": "busy"}})
    mock_api.post(GEN).mock(side_effect=[error, error, error, ok(png_b64)])
    policy = RetryPolicy(max_retries=3, backoff_initial=0.25, backoff_max=0.75)

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, retry_policy=policy) as client:
        await client.images.generate(prompt="x")

    assert instant_backoff == [0.25, 0.5, 0.75]


def _daily() -> DailyLimitExceededError:
    error = status_error(429, b'{"code": "daily_rpd_limit_exceeded"}')
    assert isinstance(error, DailyLimitExceededError)
    return error


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (ValueError("not ours"), True, False),
        (_daily(), True, False),
        (status_error(400, b"{}"), True, False),
        (status_error(429, b"{}", retry_after=3600), True, False),
        (status_error(429, b"{}", retry_after=60), True, True),
        (status_error(502, b"<html>proxy</html>"), False, False),
        (status_error(502, b"<html>proxy</html>"), True, True),
        (status_error(502, b'{"error": {"message": "origin"}}'), False, True),
        (APIConnectionError("reset", request_sent=True), False, False),
        (APIConnectionError("reset", request_sent=True), True, True),
        (APIConnectionError("refused", request_sent=False), False, True),
    ],
)
def test_should_retry_answers_exactly_true_or_false(error, idempotent, expected):
    assert should_retry(RetryPolicy(), error, idempotent=idempotent) is expected


async def test_the_after_attempt_hook_hears_every_outcome_success_included(
    client, mock_api, png_b64
):
    error = httpx.Response(503, json={"error": {"message": "busy"}})
    mock_api.post(GEN).mock(side_effect=[error, ok(png_b64)])

    class Hooks:
        def __init__(self) -> None:
            self.before = 0
            self.outcomes: list[BaseException | None] = []

        async def take_turn(self, wait_turn: Callable[[], Awaitable[None]]) -> None:
            self.before += 1
            await wait_turn()

        async def after_attempt(self, error: BaseException | None) -> None:
            self.outcomes.append(error)

    hooks = Hooks()
    await client.images.generate_from_body({"prompt": "x"}, hooks=hooks)

    assert hooks.before == 2
    assert [type(outcome) for outcome in hooks.outcomes] == [InternalServerError, type(None)]


@pytest.mark.parametrize(
    "body",
    [
        {"code": "daily_rpd_limit_exceeded", "message": "Daily request limit reached"},
        {"error": {"message": "Daily cap", "code": 429}, "code": "daily_usd_limit_exceeded"},
    ],
)
async def test_a_daily_cap_without_retry_after_is_not_retried(client, mock_api, body):
    route = mock_api.post(GEN).respond(429, json=body)

    with pytest.raises(DailyLimitExceededError) as info:
        await client.images.generate(prompt="x")

    assert route.call_count == 1
    assert info.value.resets_at > dt.datetime.now(dt.timezone.utc)
    assert (info.value.resets_at.hour, info.value.resets_at.minute) == (0, 0)


# -- details pinned by mutation testing (docs/reliability.md, "Mutation testing") -------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "Wed, 25 Nov 2026 00:00:10 -0000"}, 10.0),  # no zone: UTC
        ({"retry-after": "Wed, 25 Nov 2026 00:00:10 GMT"}, 10.0),
    ],
)
def test_retry_after_is_read_from_a_plain_mapping_of_lowercase_headers(headers, expected):
    # HTTP/2 sends header names in lower case; any Mapping will do, not only httpx.Headers.
    now = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
    assert parse_retry_after(headers, now=now) == expected


@pytest.mark.parametrize(("retry_after", "longest"), [(5, 5.5), (30, 31.0)])
def test_a_retry_after_gets_a_tenth_of_jitter_on_top_at_most_a_second(
    monkeypatch, retry_after, longest
):
    monkeypatch.setattr(random, "uniform", _top_of_range)
    error = status_error(429, b"{}", retry_after=retry_after)
    assert backoff_seconds(RetryPolicy(), 1, error) == longest


async def test_every_retry_honours_retry_after_and_says_what_it_retries(
    mock_api, png_b64, instant_backoff, caplog
):
    # The first retry runs outside tenacity, the later ones inside: both paths are pinned.
    busy = httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"message": "busy"}})
    mock_api.post(GEN).mock(side_effect=[busy, busy, busy, ok(png_b64)])
    policy = RetryPolicy(max_retries=3, backoff_initial=0.01, backoff_max=0.01)

    with caplog.at_level("INFO", logger="nanogpt_async"):
        async with AsyncNanoGPT(api_key=KEY, base_url=BASE, retry_policy=policy) as client:
            await client.images.generate(prompt="x")

    assert len(instant_backoff) == 3
    assert all(2 <= wait <= 2.2 for wait in instant_backoff)  # Retry-After, plus jitter
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert len(lines) == 3
    for number, line in enumerate(lines, start=2):
        assert re.fullmatch(
            rf"retrying POST \S+ in 2\.\d\ds \(attempt {number} of 4\) after: "
            r"NanoGPT answered 429: busy.*",
            line,
        ), line


async def test_a_permanent_error_on_a_retry_ends_the_retries(mock_api, png_b64):
    busy = httpx.Response(503, json={"error": {"message": "busy"}})
    refused = httpx.Response(400, json={"error": {"message": "bad size"}})
    route = mock_api.post(GEN).mock(side_effect=[busy, busy, refused, ok(png_b64)])

    async with AsyncNanoGPT(api_key=KEY, base_url=BASE, max_retries=5) as client:
        with pytest.raises(BadRequestError):
            await client.images.generate(prompt="x")

    assert route.call_count == 3  # the 400 on the third of six attempts is not retried
