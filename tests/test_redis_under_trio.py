"""Under trio, what needs Redis fails fast and says so: nothing waits forever, nothing is paid.

redis-py's async client runs on asyncio only. A batch's shared budget and item fence keep their
state in Redis and fail closed (no paid request goes out unchecked): under trio they used to
wait forever for a Redis they could never reach, with no word. Now the batch refuses to start,
with an `InvalidInputError` saying what to do, before any request (even the free price list).
The client's pacing only shares a schedule: it falls back to pacing the process alone, and says
why once. Each test runs its scenario under trio itself (``anyio.run(..., backend="trio")``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from nanogpt_async import AsyncNanoGPT, InvalidInputError
from nanogpt_async._batch._fence import RedisFence
from nanogpt_async._pacing._shared_budget import RedisBudget
from nanogpt_async.testing import FakeServer
from tests._redis import RedisProcess, redis_server

__all__ = ["redis_server"]

#: The batch options that need Redis, each with what the error must tell the user to drop.
NEEDS_REDIS: dict[str, tuple[dict[str, Any], str]] = {
    "shared_budget": ({"max_cost": 1, "shared_budget": "team"}, "shared_budget"),
    "job_id (the item fence)": ({"job_id": "nightly"}, "job_id"),
    "a shard (the item fence)": ({"shard": (1, 2)}, "shard"),
}


def under_trio(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario, backend="trio")


@pytest.mark.parametrize(("options", "drop"), NEEDS_REDIS.values(), ids=NEEDS_REDIS)
def test_a_batch_needing_redis_under_trio_fails_fast_before_sending_anything(
    fake_nanogpt: FakeServer,
    redis_server: RedisProcess,
    tmp_path: Path,
    options: dict[str, Any],
    drop: str,
) -> None:
    async def scenario() -> None:
        async with AsyncNanoGPT(
            api_key=fake_nanogpt.api_key,
            base_url=fake_nanogpt.base_url,
            limits_url=redis_server.url,
        ) as client:
            batch = client.images.generate_many(["a fox", "a hare"], output_dir=tmp_path, **options)
            with pytest.raises(InvalidInputError) as info:
                await batch.run()
        message = str(info.value)
        assert "asyncio" in message
        assert "trio" in message
        assert "Nothing was sent" in message
        assert drop in message

    under_trio(scenario)

    stats = fake_nanogpt.fake.stats
    assert stats.generation_requests == 0
    assert stats.model_list_requests == 0  # not even the free price list
    assert not (tmp_path / "manifest.jsonl").exists()


def test_the_shared_budget_itself_under_trio_raises_instead_of_waiting(
    redis_server: RedisProcess,
) -> None:
    budget = RedisBudget(redis_server.url, key="ngk_trio_budget", max_cost=Decimal(1))

    async def scenario() -> None:
        with pytest.raises(InvalidInputError, match="asyncio"):
            await budget.book(Decimal("0.01"))

    under_trio(scenario)


def test_the_item_fence_itself_under_trio_raises_instead_of_waiting(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    fence = RedisFence(redis_server.url, key="ngk_trio_fence", job_id="j", folder=tmp_path)

    async def scenario() -> None:
        with pytest.raises(InvalidInputError, match="asyncio"):
            await fence.claim("item-1")

    under_trio(scenario)


def test_redis_pacing_under_trio_paces_the_process_alone_and_says_why_once(
    fake_nanogpt: FakeServer, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with AsyncNanoGPT(
            api_key=fake_nanogpt.api_key,
            base_url=fake_nanogpt.base_url,
            limits_url=redis_server.url,
            rps=1000,
        ) as client:
            for _ in range(3):
                await client.images.generate(prompt="paced")

    with caplog.at_level(logging.INFO, logger="nanogpt_async"):
        under_trio(scenario)

    assert fake_nanogpt.fake.stats.generations == 3
    said = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
    assert len(said) == 1, said
    assert "asyncio" in said[0]
    assert "trio" in said[0]
    assert "unreachable" not in said[0]  # Redis is fine: the event loop is the reason
