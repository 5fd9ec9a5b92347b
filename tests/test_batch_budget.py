"""The ``max_cost`` budget: unit tests of its rules, and money counts against the fake server.

The fake charges every completed generation (even when the client hung up); these tests compare
what it charged with what the batch recorded and let through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from nanogpt_async import AsyncNanoGPT, ImageModel, InvalidInputError
from nanogpt_async._batch._budget import Budget, PriceList, Reservation, Sample, known_cost
from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer, Fault
from nanogpt_async.testing._state import FakeState
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_budget_SECRET_77"
D = Decimal


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def client_for(server: FakeServer, **options: Any) -> AbstractAsyncContextManager[AsyncNanoGPT]:
    return fake_client(server, KEY, **options)


def prompts(count: int) -> list[str]:
    return [f"budget prompt {i}" for i in range(count)]


def state_cost_as(fake: FakeState, stated: object) -> None:
    """Make the fake charge as usual but state ``stated`` as the answer's ``cost``."""
    charge = fake.charge

    def charge_and_misreport(prompt: str, images: int) -> tuple[Any, float] | None:
        charged = charge(prompt, images)
        return None if charged is None else (stated, charged[1])

    fake.charge = charge_and_misreport  # type: ignore[method-assign]


def manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


# -- the rules, unit by unit ------------------------------------------------------------------


async def test_a_budget_of_zero_admits_nothing() -> None:
    assert await Budget(D(0)).admit(D("0.01"), 1) is None


async def test_a_budget_exactly_reached_admits_no_more() -> None:
    budget = Budget(D("0.02"))
    first = await budget.admit(D("0.01"), 1)
    assert first is not None
    budget.settle(first, D("0.02"), 1, charged=True)  # cost more than estimated: now exactly at
    assert budget.spent == D("0.02")
    assert await budget.admit(D(0), 1) is None  # even a free-looking request is not started


async def test_a_remainder_smaller_than_one_request_with_nothing_in_flight_stops() -> None:
    budget = Budget(D("0.015"))
    first = await budget.admit(D("0.01"), 1)
    assert first is not None
    budget.settle(first, D("0.01"), 1, charged=True)
    with anyio.fail_after(5):  # a hang is the bug; the answer is immediate
        assert await budget.admit(D("0.01"), 1) is None


async def test_in_flight_requests_hold_their_estimate_until_they_settle() -> None:
    budget = Budget(D("0.03"))
    held = [await budget.admit(D("0.01"), 1) for _ in range(3)]
    assert budget.in_flight == 3
    assert budget.reserved == D("0.03")
    admitted: list[Reservation | None] = []

    async def fourth() -> None:
        admitted.append(await budget.admit(D("0.01"), 1))

    async with anyio.create_task_group() as group:
        group.start_soon(fourth)
        await anyio.wait_all_tasks_blocked()
        assert admitted == []  # waits: three in flight hold the whole budget
        first = held[0]
        assert first is not None
        budget.settle(first, None, 1, charged=False)  # failed before any charge: frees 0.01
    assert admitted == [Reservation(D("0.01"), 1)]


async def test_an_estimate_above_the_real_price_still_spends_up_to_the_budget() -> None:
    budget = Budget(D("0.03"))
    first = await budget.admit(D("0.02"), 1)
    assert first is not None
    waiting: list[Reservation | None] = []

    async def second() -> None:
        waiting.append(await budget.admit(D("0.02"), 1))

    async with anyio.create_task_group() as group:
        group.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert waiting == []  # does not fit next to the first: waits, does not stop
        budget.settle(first, D("0.01"), 1, charged=True)
    assert waiting == [Reservation(D("0.02"), 1)]


async def test_a_request_for_n_images_reserves_n_times_the_price() -> None:
    budget = Budget(D("0.05"))
    reservation = await budget.admit(D("0.01"), 4)
    assert reservation is not None
    assert budget.reserved == D("0.04")
    budget.settle(reservation, None, 4, charged=True)  # answered without a price
    assert budget.spent == D("0.04")
    assert await budget.admit(D("0.01"), 2) is None


def test_a_charge_of_unknown_price_counts_at_its_estimate_and_no_charge_at_nothing() -> None:
    budget = Budget(D(1))
    budget.in_flight = 2
    budget.settle(Reservation(D("0.01"), 2), None, 3, charged=True)  # 3 images came back
    assert budget.spent == D("0.03")
    budget.settle(Reservation(D("0.01"), 1), None, 1, charged=False)
    assert budget.spent == D("0.03")
    assert budget.in_flight == 0
    assert budget.unpriced == 1


def test_the_estimate_falls_back_to_the_highest_price_per_image_seen() -> None:
    prices = PriceList([ImageModel("listed", pricing={"1024*1024": 0.02})])
    budget = Budget(D(1), prices)
    assert budget.estimate("listed", "1024x1024") == D("0.02")
    assert budget.estimate("unlisted", None) is None
    budget.in_flight = 2
    budget.settle(Reservation(D("0.02"), 2), D("0.06"), 2, charged=True)
    budget.settle(Reservation(D("0.02"), 4), D("0.04"), 4, charged=True)
    assert budget.largest_per_image == D("0.03")
    assert budget.estimate("unlisted", "512x512") == D("0.03")
    assert budget.estimate("listed", "1024x1024") == D("0.02")  # the list wins where it has one


def test_the_estimate_is_the_listed_price_of_the_items_own_size() -> None:
    prices = PriceList([ImageModel("m", pricing={"1024*1024": 0.01, "2048*2048": 0.04})])
    assert Budget(D(1), prices).estimate("m", "1024x1024") == D("0.01")


def test_without_a_price_list_the_estimate_is_the_highest_price_seen() -> None:
    budget = Budget(D(1))
    assert budget.estimate("m", "1024x1024") is None
    budget.in_flight = 1
    budget.settle(Reservation(D("0.01"), 1), D("0.05"), 1, charged=True)
    assert budget.estimate("m", "1024x1024") == D("0.05")


async def test_without_a_budget_requests_are_admitted_and_counted_in_flight() -> None:
    budget = Budget(None)
    reservations = [await budget.admit(None, 4) for _ in range(3)]
    assert budget.in_flight == 3
    assert all(r is not None and r.amount == 0 for r in reservations)
    for reservation in reservations:
        assert reservation is not None
        budget.settle(reservation, D("0.01"), 1, charged=True)
    assert (budget.in_flight, budget.spent) == (0, D("0.03"))


async def test_a_budgeted_request_without_an_estimate_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"^a budgeted request needs a price estimate$"):
        await Budget(D(1)).admit(None, 1)


def test_a_size_without_its_own_price_takes_the_models_highest() -> None:
    prices = PriceList(
        [
            ImageModel("m", pricing={"1024*1024": 0.01, "2048*2048": 0.04, "junk": float("nan")}),
            ImageModel("free-text", pricing={}),
        ]
    )
    assert prices.per_image("m", "2048x2048") == D("0.04")
    assert prices.per_image("m", "1024*1024") == D("0.01")
    assert prices.per_image("m", "1024x1024") == D("0.01")  # the API's "x" is the list's "*"
    assert prices.per_image("m", "auto") == D("0.04")
    assert prices.per_image("m", None) == D("0.04")
    assert prices.per_image("free-text", None) is None
    assert len(prices) == 1


@pytest.mark.parametrize(
    ("stated", "known"),
    [
        (0.01, D("0.01")),
        (0, D(0)),
        (None, None),
        ("0.01", None),
        (float("nan"), None),
        (float("inf"), None),
        (-0.01, None),
        (True, None),
    ],
)
def test_only_a_finite_non_negative_number_is_a_known_cost(stated: object, known: object) -> None:
    assert known_cost(stated) == known


def test_latency_percentiles_come_from_the_sample_and_none_without_one() -> None:
    sample = Sample(size=1000)
    assert (sample.quantile(0.5), sample.max) == (None, None)
    for value in range(100, 0, -1):
        sample.add(float(value))
    assert (sample.quantile(0.5), sample.quantile(0.99), sample.max) == (50.0, 99.0, 100.0)
    small = Sample(size=10)  # a reservoir: bounded memory, still the exact maximum
    for value in range(1000):
        small.add(float(value))
    assert small.max == 999.0
    assert len(small._values) == 10
    assert small.quantile(0.0) is not None  # every kept value is a number, even replaced ones


class RecordingRandom:
    """Stands in for the sample's RNG: records each ``randrange`` bound, answers slot 0."""

    def __init__(self) -> None:
        self.bounds: list[int] = []

    def randrange(self, stop: int) -> int:
        self.bounds.append(stop)
        return 0


def test_a_full_sample_draws_each_new_values_slot_among_every_value_seen() -> None:
    # Algorithm R: the k-th value replaces a kept one with probability size/k, so the sample
    # stays uniform. Drawing among fewer or more values than seen biases the percentiles.
    sample = Sample(size=3)
    sample._rng = RecordingRandom()  # type: ignore[assignment]
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        sample.add(value)
    assert sample._rng.bounds == [4, 5, 6]  # type: ignore[attr-defined]
    assert sorted(sample._values) == [2.0, 3.0, 6.0]  # slot 0 replaced by each later value


def test_a_reservoir_sample_stays_uniform_over_a_long_stream() -> None:
    sample = Sample(size=100)
    for value in range(10_000):
        sample.add(float(value))
    median = sample.quantile(0.5)
    assert median is not None
    assert 4_000 <= median <= 6_000  # early values are not favoured (true median: 5000)


def test_the_same_stream_gives_the_same_percentiles_run_after_run() -> None:
    first, second = Sample(size=10), Sample(size=10)
    for value in range(1000):
        first.add(float(value))
        second.add(float(value))
    assert first._values == second._values  # a fixed seed: reproducible summaries


# -- money against the fake -------------------------------------------------------------------


@pytest.mark.parametrize("stated", [None, "NaN", "Infinity", -0.01, "a lot"])
async def test_a_budget_holds_when_answers_do_not_state_a_real_price(
    serve: Serve, tmp_path: Path, stated: object
) -> None:
    server = serve(price_per_image=0.01)
    state_cost_as(server.fake, stated)
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(30), output_dir=tmp_path, max_cost=0.05, concurrency=8, rps=None
        ).run()
    # The image-models price ($0.01) is the estimate: exactly five fit in $0.05.
    assert server.fake.stats.generations == 5
    assert server.fake.stats.charged_usd == pytest.approx(0.05)
    assert summary.stopped_reason == "budget"
    assert summary.ok == 5
    assert summary.not_started == 25
    assert (summary.cost, summary.unpriced) == (0.0, 5)
    rows = manifest(tmp_path)  # json.loads of every line: no NaN written
    assert [row["cost"] for row in rows] == [None] * 5
    assert all(row["status"] == "ok" for row in rows)


async def test_a_budget_holds_when_every_answer_is_lost_after_the_charge(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(price_per_image=0.01)
    server.fake.enqueue(Fault.reset_after_charge(), count=30)
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(30), output_dir=tmp_path, max_cost=0.05, concurrency=8, rps=None
        ).run()
    assert server.fake.stats.generations == 5
    assert summary.stopped_reason == "budget"
    assert summary.failed == 5
    assert summary.unpriced == 5
    assert len(manifest(tmp_path)) == 5  # every charged request is recorded


def test_the_cli_budget_holds_without_prices_and_says_what_was_not_priced(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(price_per_image=0.01)
    state_cost_as(server.fake, None)
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"prompt {i}\n" for i in range(30)))
    env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(
        cli,
        ["batch", str(source), "-o", str(tmp_path / "out"), "--max-cost", "0.05", "-c", "8"],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 4, result.output
    assert server.fake.stats.generations == 5
    assert len(manifest(tmp_path / "out")) == 5
    assert "$0.0000 + 5 charged request(s) whose price was not stated" in result.stdout


async def test_a_budget_of_zero_sends_no_request(serve: Serve) -> None:
    server = serve()
    async with client_for(server) as client:
        summary = await client.images.generate_many(prompts(10), max_cost=0, rps=None).run()
    assert server.fake.stats.generation_requests == 0
    assert summary.stopped_reason == "budget"
    assert summary.not_started == 10


async def test_a_budget_counts_every_image_of_an_n_image_request(serve: Serve) -> None:
    server = serve(price_per_image=0.01)
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(10), n=3, max_cost=0.10, concurrency=8, rps=None
        ).run()
    # 3 requests of 3 images ($0.09); a fourth ($0.12) would pass $0.10.
    assert server.fake.stats.generations == 3
    assert server.fake.stats.images_generated == 9
    assert summary.cost == pytest.approx(0.09)
    assert summary.stopped_reason == "budget"


async def test_a_run_that_never_learns_a_price_still_runs_requests_side_by_side(
    serve: Serve,
) -> None:
    server = serve(latency=0.2, price_per_image=0.01)
    state_cost_as(server.fake, None)
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(8), max_cost=1, concurrency=4, rps=None
        ).run()
    assert summary.ok == 8
    assert server.fake.stats.max_in_flight == 4


async def test_a_budgeted_run_refuses_to_start_for_a_model_without_a_price(serve: Serve) -> None:
    server = serve()
    async with client_for(server) as client:
        batch = client.images.generate_many(prompts(5), model="hidraem", max_cost=1)
        with pytest.raises(InvalidInputError, match=r"no price for model 'hidraem'"):
            await batch.run()
    assert server.fake.stats.generation_requests == 0


async def test_a_budgeted_run_refuses_to_start_without_the_price_list(serve: Serve) -> None:
    server = serve()
    server.fake.enqueue(Fault.status(404), route="image-models")
    async with client_for(server) as client:
        with pytest.raises(InvalidInputError, match=r"image-models list .* could not be read"):
            await client.images.generate_many(prompts(5), max_cost=1).run()
    assert server.fake.stats.generation_requests == 0


async def test_an_item_of_an_unpriced_model_fails_unsent_in_a_budgeted_run(serve: Serve) -> None:
    server = serve()
    # The typo comes first: no price has been seen yet to fall back on.
    items = [{"prompt": "typo", "model": "hidraem"}, {"prompt": "priced"}]
    async with client_for(server) as client:
        batch = client.images.generate_many(items, max_cost=1, rps=None)
        async with batch:
            results = {result.request["prompt"]: result async for result in batch}
    assert results["priced"].status == "ok"
    assert results["typo"].status == "failed"
    assert "no price estimate for model 'hidraem'" in str(results["typo"].error)
    assert server.fake.stats.generations_by_prompt == {"priced": 1}


async def test_items_a_stop_leaves_unsent_are_not_counted_as_spent(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(price_per_image=0.01)
    async with client_for(server) as client:
        batch = client.images.generate_many(
            prompts(20), output_dir=tmp_path, max_cost=1, concurrency=8, rps=2
        )
        async with batch:
            async for _ in batch:
                batch.stop()  # the admitted items still waiting for a turn are never sent
        summary = batch.summary
    assert summary.not_started > 0
    # Each was counted as charged at its estimate (no stated price) though never sent.
    assert summary.unpriced == 0
    assert summary.cost == pytest.approx(server.fake.stats.charged_usd)
