"""Whole numbers, one home (`nanogpt_async._input._numbers`): body fields and batch settings.

A request field (``n``) and a batch setting (``concurrency``, ``burst``,
``download_concurrency``) are checked by one function and refused in one wording. They differ
where their sources do: a body field accepts ``2.0`` (JSON Schema's ``integer`` does; prompt
files are JSON and CSV), a batch setting is a Python argument and refuses any float (a
``len(items) / 4`` would pass for 8 items and fail for 9). A body field must also fit in 64
bits (JSON's encoder and NanoGPT's seeds); a setting has no upper bound of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from nanogpt_async import AsyncNanoGPT, InvalidInputError
from nanogpt_async._input._body import check_generation_fields

SETTINGS = ("concurrency", "burst", "download_concurrency")


def body_n(value: object) -> Any:
    return check_generation_fields({"prompt": "x", "n": value})["n"]


def batch_with(**setting: object) -> None:
    client = AsyncNanoGPT(api_key="ngk_whole_numbers", base_url="http://127.0.0.1:9/v1")
    client.images.generate_many(["x"], **setting)  # type: ignore[arg-type]


def refusal(check: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidInputError) as info:
        check(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (True, "must be a whole number of at least 1, got True"),
        (False, "must be a whole number of at least 1, got False"),
        (2.5, "must be a whole number of at least 1, got 2.5"),
        ("2", "must be a whole number of at least 1, got '2'"),
        (0, "must be at least 1, got 0"),
        (-3, "must be at least 1, got -3"),
    ],
)
def test_a_body_field_and_every_batch_setting_refuse_alike(value: object, said: str) -> None:
    assert refusal(body_n, value) == f"n {said}"
    for name in SETTINGS:
        assert refusal(batch_with, **{name: value}) == f"{name} {said}"


def test_a_whole_float_is_the_integer_in_a_body_and_refused_as_a_batch_setting() -> None:
    checked = body_n(2.0)
    assert checked == 2
    assert type(checked) is int  # sent as the JSON integer 2
    for name in SETTINGS:
        said = refusal(batch_with, **{name: 2.0})
        assert said == f"{name} must be a whole number of at least 1, got 2.0"


def test_a_huge_body_field_is_refused_past_64_bits_and_a_huge_setting_by_its_own_limit() -> None:
    assert body_n(2**64 - 1) == 2**64 - 1
    assert "(a 64-bit integer), got 18446744073709551616" in refusal(body_n, 2**64)
    # concurrency: the connection pool is its limit; burst has none; downloads are capped.
    assert "must not exceed the client's connection pool" in refusal(batch_with, concurrency=10**30)
    batch_with(burst=10**30)
    batch_with(download_concurrency=10**30)


def test_bounds_from_low_to_high_are_said_alike_for_a_wrong_type_and_out_of_range() -> None:
    fields = {"prompt": "x", "num_inference_steps": 0}
    assert refusal(check_generation_fields, fields) == (
        "num_inference_steps must be from 1 to 100, got 0"
    )
    fields["num_inference_steps"] = 1.5
    assert refusal(check_generation_fields, fields) == (
        "num_inference_steps must be a whole number from 1 to 100, got 1.5"
    )
