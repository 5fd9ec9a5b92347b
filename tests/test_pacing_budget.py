"""A max_cost shared through a real Redis: reserve, settle, dead processes, fail closed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from nanogpt_async._pacing._shared_budget import RedisBudget
from nanogpt_async.testing import FakeNanoGPT
from tests._redis import RedisProcess, redis_is_asyncio_only, redis_server

__all__ = ["redis_server"]

pytestmark = redis_is_asyncio_only

KEY = "ngk_budget_SECRET_55"
ROOT = Path(__file__).resolve().parents[1]
CENT = Decimal("0.01")


def budget_on(server: RedisProcess, cap: str = "0.05", **options: object) -> RedisBudget:
    return RedisBudget(server.url, key=KEY, max_cost=Decimal(cap), **options)  # type: ignore[arg-type]


async def test_reservations_stop_at_the_cap_across_processes(redis_server: RedisProcess) -> None:
    first, second = budget_on(redis_server), budget_on(redis_server)
    booked = [await (first if i % 2 else second).reserve(CENT) for i in range(7)]
    assert sum(b is not None for b in booked) == 5
    assert booked[5] is None
    assert booked[6] is None
    assert await first.totals() == (Decimal(0), Decimal("0.05"))


async def test_settling_a_cheaper_cost_frees_room(redis_server: RedisProcess) -> None:
    budget = budget_on(redis_server, cap="0.02")
    one, two = await budget.reserve(CENT), await budget.reserve(CENT)
    assert one is not None
    assert two is not None
    assert await budget.reserve(CENT) is None
    await budget.settle(one, Decimal("0.004"), maybe_charged=False)
    assert await budget.reserve(CENT) is None  # 0.004 + 0.01 + 0.01 > 0.02
    await budget.settle(two, Decimal("0.004"), maybe_charged=False)
    assert await budget.reserve(CENT) is not None  # 0.008 + 0.01 <= 0.02
    spent, held = await budget.totals()
    assert spent == Decimal("0.008")
    assert held == CENT


async def test_a_booking_waits_for_live_reservations_and_stops_only_when_spent(
    redis_server: RedisProcess,
) -> None:
    budget, other = budget_on(redis_server, cap="0.03"), budget_on(redis_server, cap="0.03")
    first, second, third = [await other.book(CENT) for _ in range(3)]
    assert not isinstance(first, str)
    assert not isinstance(second, str)
    assert not isinstance(third, str)
    # Live reservations are in the way, not spending: "full" (wait), not "spent" (stop).
    assert await budget.book(CENT) == "full"
    await other.settle(first, Decimal("0.004"), maybe_charged=False)
    await other.settle(second, None, maybe_charged=False)  # released: never sent
    assert not isinstance(await budget.book(CENT), str)  # 0.004 + 0.01 held + 0.01 <= 0.03
    assert await budget.book(CENT) == "full"  # 0.004 + 0.02 held + 0.01 > 0.03
    assert await budget.book(Decimal("0.03")) == "spent"  # 0.004 + 0.03 > 0.03 whatever settles
    assert await budget.reserve(CENT) is None  # the old answer to both: not now


async def test_room_wakes_at_a_settlement_in_this_process(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nanogpt_async._pacing._shared_budget.ROOM_POLL", 3600.0)
    budget = budget_on(redis_server, cap="0.01")
    booking = await budget.book(CENT)
    assert not isinstance(booking, str)
    assert await budget.book(CENT) == "full"
    woke: list[bool] = []

    async def wait() -> None:
        await budget.room()
        woke.append(True)

    with anyio.fail_after(30):  # without the settlement's wake-up it would wait an hour
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await budget.settle(booking, None, maybe_charged=False)
    assert woke == [True]
    assert not isinstance(await budget.book(CENT), str)


async def test_an_ambiguous_failure_counts_as_spent_and_a_refusal_does_not(
    redis_server: RedisProcess,
) -> None:
    budget = budget_on(redis_server)
    maybe = await budget.reserve(CENT)
    refused = await budget.reserve(CENT)
    assert maybe is not None
    assert refused is not None
    await budget.settle(maybe, None, maybe_charged=True)
    await budget.settle(refused, None, maybe_charged=False)
    assert await budget.totals() == (CENT, Decimal(0))


async def test_a_dead_processs_reservation_expires_as_spent(redis_server: RedisProcess) -> None:
    budget = budget_on(redis_server, reservation_ttl=0.001)
    lost = await budget.reserve(CENT)  # its process "dies": never settled
    assert lost is not None
    await anyio.sleep(0.01)  # Redis's own clock must pass the 1 ms expiry
    assert await budget.totals() == (CENT, Decimal(0))
    # A late settlement adds only what the real cost exceeded the estimate by.
    await budget.settle(lost, Decimal("0.015"), maybe_charged=False)
    assert await budget.totals() == (Decimal("0.015"), Decimal(0))


async def test_repeated_calls_count_once(redis_server: RedisProcess) -> None:
    budget = budget_on(redis_server)
    booking = await budget.reserve(CENT)
    assert booking is not None
    connection = budget._redis.connection()
    reserve = budget._redis.scripts["reserve"]
    settle = budget._redis.scripts["settle"]
    keys = budget._redis.keys
    assert await reserve(keys=keys, args=[booking.id, 10000, 50000, 60000], client=connection)
    assert await budget.totals() == (Decimal(0), CENT)
    for _ in range(2):
        await settle(keys=keys, args=[booking.id, 8000, 0, 10000], client=connection)
    assert await budget.totals() == (Decimal("0.008"), Decimal(0))


async def test_the_budget_fails_closed_while_redis_is_down(redis_server: RedisProcess) -> None:
    waits: list[float] = []

    async def restart_after_two_tries(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            redis_server.start()

    budget = budget_on(redis_server, sleep=restart_after_two_tries)
    booking = await budget.reserve(CENT)
    assert booking is not None
    redis_server.stop()
    await budget.settle(booking, CENT, maybe_charged=False)  # kept, written later
    with anyio.fail_after(30):
        again = await budget.reserve(CENT)  # waits for Redis: nothing unchecked goes out
    assert len(waits) == 2
    assert again is not None
    # The restarted Redis is empty (no persistence): the kept settlement was written to it.
    spent, held = await budget.totals()
    assert spent == CENT
    assert held == CENT


_WORKER = textwrap.dedent(
    """
    import json, sys
    from decimal import Decimal
    import anyio
    from nanogpt_async import AsyncNanoGPT
    from nanogpt_async._pacing._shared_budget import RedisBudget

    base_url, redis_url = sys.argv[1], sys.argv[2]
    estimate = Decimal("0.01")

    async def main():
        budget = RedisBudget(redis_url, key="KEY", max_cost=Decimal("0.20"))
        paid = []
        async with AsyncNanoGPT(api_key="KEY", base_url=base_url, rps=None) as client:
            async def one(n):
                while True:
                    booking = await budget.reserve(estimate)
                    if booking is None:
                        return
                    try:
                        response = await client.images.generate(prompt=f"{sys.argv[3]} {n}")
                    except Exception:
                        await budget.settle(booking, None, maybe_charged=True)
                        raise
                    await budget.settle(booking, Decimal(str(response.cost)), maybe_charged=False)
                    paid.append(response.cost)
            async with anyio.create_task_group() as group:
                for n in range(16):
                    group.start_soon(one, n)
        await budget.aclose()
        print(json.dumps(paid))

    anyio.run(main)
    """
).replace("KEY", KEY)


@pytest.mark.slow
def test_processes_sharing_a_budget_spend_no_more_than_it(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Two processes of 16 callers each: 32 reserving at once against a cap of 20 requests, as
    # four of 8 did, at half the process starts.
    with FakeNanoGPT(api_key=KEY, price_per_image=0.01, latency=0.02).run_in_thread() as server:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), server.base_url, redis_server.url, f"w{i}"],
                stdout=subprocess.PIPE,
                env=env,
            )
            for i in range(2)
        ]
        paid = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
        charged = Decimal(str(server.fake.stats.charged_usd))
    assert all(proc.returncode == 0 for proc in procs)
    recorded = sum(Decimal(str(cost)) for costs in paid for cost in costs)
    assert charged == recorded == Decimal("0.20")  # the cap, exactly: estimates were exact


async def test_two_batches_sharing_a_budget_spend_no_more_than_it_together(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    import json as json_module

    from nanogpt_async import AsyncNanoGPT

    with FakeNanoGPT(api_key=KEY, price_per_image=0.01).run_in_thread() as server:
        url = redis_server.url
        first = AsyncNanoGPT(api_key=KEY, base_url=server.base_url, limits_url=url)
        second = AsyncNanoGPT(api_key=KEY, base_url=server.base_url, limits_url=url)
        async with first, second:
            summaries = []

            async def run(client: AsyncNanoGPT, name: str) -> None:
                batch = client.images.generate_many(
                    [f"{name} {i}" for i in range(10)],
                    output_dir=tmp_path / name,
                    max_cost=0.05,
                    shared_budget="nightly",
                    concurrency=2,
                )
                summaries.append(await batch.run())

            async with anyio.create_task_group() as group:
                group.start_soon(run, first, "a")
                group.start_soon(run, second, "b")
        charged = Decimal(str(server.fake.stats.charged_usd))
    recorded = sum(
        Decimal(str(line["cost"]))
        for name in ("a", "b")
        for line in map(
            json_module.loads, (tmp_path / name / "manifest.jsonl").read_text().splitlines()
        )
        if line["cost"] is not None
    )
    assert charged == recorded  # every charge on record
    # One cap for both, not $0.05 each. Under heavy load a reservation can outlive its lease and
    # count as spent (the safe direction), so a run may stop a request short of the cap.
    assert Decimal("0.04") <= charged <= Decimal("0.05")
    assert sum(s.ok for s in summaries) == int(charged / Decimal("0.01"))
    assert all(s.stopped_reason == "budget" for s in summaries)


async def test_batches_at_concurrency_64_spend_a_shared_budget_up_to_its_cap(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Reservations are taken at each request's turn, and a full cap waits for settlements.

    Taken at admission, 3 x 64 of them filled the cap before a third of it was spent, and a
    refusal stopped the batch: $0.33 of $2 in W11 (8 processes x 64).
    """
    from nanogpt_async import AsyncNanoGPT

    cap = Decimal("0.30")
    fake = FakeNanoGPT(api_key=KEY, price_per_image=0.01, latency=0.05)
    with fake.run_in_thread() as server:
        url = redis_server.url
        clients = [
            AsyncNanoGPT(api_key=KEY, base_url=server.base_url, limits_url=url, rps=500)
            for _ in range(3)
        ]
        summaries = []

        async def run(client: AsyncNanoGPT, name: str) -> None:
            async with client:
                batch = client.images.generate_many(
                    [f"{name} {i}" for i in range(60)],
                    output_dir=tmp_path / name,
                    max_cost=cap,
                    shared_budget="wide",
                    concurrency=64,
                )
                summaries.append(await batch.run())

        async with anyio.create_task_group() as group:
            for index, client in enumerate(clients):
                group.start_soon(run, client, f"b{index}")
        charged = Decimal(str(fake.stats.charged_usd))
    recorded = sum(
        Decimal(str(line["cost"]))
        for index in range(3)
        for line in map(json.loads, (tmp_path / f"b{index}" / "manifest.jsonl").open())
        if line["cost"] is not None
    )
    assert charged == recorded  # every charge on record
    # Never past the cap (estimates are exact here), and spent to it: short of it by less than
    # one request's estimate (the only shortfall a stop allows).
    assert cap - CENT < charged <= cap
    assert all(s.stopped_reason == "budget" for s in summaries)
    assert max(fake.stats.generations_by_prompt.values()) == 1


def test_a_shared_budget_needs_a_cap_and_redis() -> None:
    from nanogpt_async import AsyncNanoGPT, InvalidInputError

    client = AsyncNanoGPT(api_key=KEY)
    with pytest.raises(InvalidInputError, match="limits_url"):
        client.images.generate_many(["x"], max_cost=1, shared_budget="nightly")


def test_cli_batches_with_one_shared_budget_stop_at_it_together(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    import json as json_module

    from click.testing import CliRunner

    from nanogpt_async._cli._commands import cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    with FakeNanoGPT(api_key=KEY, price_per_image=0.01).run_in_thread() as server:
        env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
        for name in ("first", "second"):
            args = ["batch", str(prompts), "-o", str(tmp_path / name), "-c", "1"]
            args += ["--max-cost", "0.03", "--shared-budget", "weekly"]
            args += ["--limits-url", redis_server.url, "--no-gallery"]
            result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
            assert result.exit_code in (0, 4), result.stderr  # 4: stopped by the budget
        charged = Decimal(str(server.fake.stats.charged_usd))
    assert charged == Decimal("0.03")  # the second run found the shared cap spent
    second = tmp_path / "second" / "manifest.jsonl"
    lines = second.read_text().splitlines() if second.exists() else []
    assert not [line for line in map(json_module.loads, lines) if line["status"] == "ok"]


async def test_every_key_of_a_budget_and_its_pacing_is_in_one_cluster_hash_slot(
    redis_server: RedisProcess,
) -> None:
    # Redis Cluster runs a script only when the keys it touches live on one node. Every key is
    # named under the key's hash in braces (a hash tag), the budget's per-booking markers
    # included, so they all hash to one slot.
    from redis.crc import key_slot

    from nanogpt_async._pacing._redis import RedisBackend

    budget = budget_on(redis_server, "1.00")
    pacing = RedisBackend(redis_server.url, key=KEY)
    await pacing.reserve(interval=0.1, burst=1, max_wait=60.0)
    await pacing.cooldown(1.0)
    booked = await budget.reserve(Decimal("0.01"))
    assert booked is not None
    await budget.settle(booked, Decimal("0.01"), maybe_charged=False)
    connection = pacing.link.connection()
    keys = [key async for key in connection.scan_iter("*")]
    assert len(keys) >= 5  # pacing state, members, a token, budget totals, a marker
    assert len({key_slot(key) for key in keys}) == 1, keys
    await pacing.aclose()
    await budget.aclose()
