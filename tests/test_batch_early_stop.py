"""A systematic error stops a batch early; a dry run checks and prices it without paying."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from nanogpt_async import (
    AsyncNanoGPT,
    BadRequestError,
    InternalServerError,
    NotFoundError,
)
from nanogpt_async._batch._streak import STREAK, ErrorStreak
from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import FakeServer
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_streak_SECRET_55"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def client_for(server: FakeServer, **options: Any) -> AbstractAsyncContextManager[AsyncNanoGPT]:
    return fake_client(server, KEY, **options)


def prompts(count: int) -> list[str]:
    return [f"streak prompt {i}" for i in range(count)]


def run_cli(server: FakeServer, *args: str) -> Result:
    env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert KEY not in result.output
    return result


# -- early stop -------------------------------------------------------------------------------


async def test_a_mistyped_model_stops_the_batch_after_the_first_failures(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            prompts(200), output_dir=tmp_path, model="hidraem", concurrency=4, rps=None
        ).run()
    assert summary.stopped_reason is not None
    assert summary.stopped_reason.startswith(f"fatal: the first {STREAK} items all failed")
    assert "HTTP 404" in summary.stopped_reason
    assert isinstance(summary.fatal_error, NotFoundError)
    # The streak, plus at most the other requests already in flight when it ended.
    assert STREAK <= server.fake.stats.generation_requests <= STREAK + 3
    assert server.fake.stats.generations == 0
    assert summary.failed == len((tmp_path / "manifest.jsonl").read_text().splitlines())
    assert summary.not_started == 200 - summary.failed


async def test_failures_after_a_success_never_stop_the_batch(serve: Serve) -> None:
    server = serve()
    items: list[Any] = [
        "works",
        *({"prompt": p, "model": "hidraem"} for p in prompts(STREAK + 5)),
        "works too",
    ]
    async with client_for(server) as client:
        summary = await client.images.generate_many(items, concurrency=1, rps=None).run()
    assert (summary.ok, summary.failed, summary.stopped_reason) == (2, STREAK + 5, None)


async def test_content_policy_refusals_never_stop_the_batch(serve: Serve) -> None:
    server = serve()
    refused = [f"something forbidden {i}" for i in range(STREAK + 5)]
    async with client_for(server) as client:
        summary = await client.images.generate_many(
            [*refused, "a fox"], concurrency=1, rps=None
        ).run()
    assert (summary.failed, summary.ok, summary.stopped_reason) == (STREAK + 5, 1, None)


def test_a_streak_needs_the_same_status_and_code_and_ignores_transient_failures() -> None:
    streak = ErrorStreak(limit=3)
    not_found = NotFoundError("no such model", status_code=404, code="model_not_found")
    bad_size = BadRequestError("bad size", status_code=400, code="invalid_size")
    server_error = InternalServerError("oops", status_code=500)
    outcomes = [
        streak.observe(e)
        for e in (not_found, not_found, bad_size, bad_size, server_error, bad_size)
    ]
    assert outcomes == [False, False, False, False, False, True]
    assert "HTTP 400, code 'invalid_size'" in streak.describe()
    streak.observe(None)  # one answer: from now on failures are the items' own
    assert not any(streak.observe(not_found) for _ in range(5))


# -- dry run ----------------------------------------------------------------------------------


async def test_a_dry_run_checks_and_prices_every_item_and_sends_nothing_paid(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(price_per_image=0.01)
    items: list[Any] = [
        *prompts(4),
        {"prompt": "wide", "size": "1360x768", "n": 2},
        {"prompt": "typo", "model": "hidraem"},
        {"prompt": "bad size", "model": "flux-kontext", "size": "9x9"},
        {"prompt": "too many", "model": "flux-kontext", "n": 3},
        {"prompt": ""},
    ]
    async with client_for(server) as client:
        plan = await client.images.generate_many(items, output_dir=tmp_path / "out").dry_run()
    assert server.fake.stats.generation_requests == 0
    assert server.fake.stats.model_list_requests == 1
    assert not (tmp_path / "out").exists()  # only read, never created
    assert (plan.items, plan.requests, plan.invalid, plan.skipped) == (9, 8, 1, 0)
    assert plan.images == 4 + 2 + 1 + 1 + 3
    assert plan.unpriced == 1  # the typo
    assert plan.estimated_cost == Decimal("0.10")
    assert not plan.ok
    problems = "\n".join(plan.problems)
    assert "model 'hidraem' is not in the image-models list (1 item)" in problems
    assert "model 'flux-kontext' does not offer size '9x9'" in problems
    assert "model 'flux-kontext' makes at most 1 images per request (1 item)" in problems
    assert "invalid item" in problems


async def test_a_dry_run_counts_what_an_earlier_run_finished(serve: Serve, tmp_path: Path) -> None:
    server = serve()
    async with client_for(server) as client:
        await client.images.generate_many(prompts(3), output_dir=tmp_path, rps=None).run()
        plan = await client.images.generate_many(prompts(5), output_dir=tmp_path).dry_run()
    assert (plan.skipped, plan.requests, plan.ok) == (3, 2, True)
    assert server.fake.stats.generation_requests == 3


def test_batch_dry_run_prints_the_estimate_and_sends_nothing(serve: Serve, tmp_path: Path) -> None:
    server = serve(price_per_image=0.005)
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"prompt {i}\n" for i in range(20)))
    out = tmp_path / "out"
    result = run_cli(
        server, "batch", str(source), "-o", str(out), "--dry-run", "--max-cost", "0.05"
    )
    assert result.exit_code == 0, result.output
    assert "estimated cost         $0.1000" in result.stdout
    assert "hidream default size: 20 request(s), 20 image(s) at $0.0050/image" in result.stdout
    assert "would stop at the budget" in result.stdout
    assert server.fake.stats.generation_requests == 0
    assert not out.exists()


def test_batch_dry_run_of_a_mistyped_model_exits_2_and_says_so(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    result = run_cli(
        server, "batch", str(source), "-o", str(tmp_path / "o"), "--dry-run", "-m", "hidraem"
    )
    assert result.exit_code == 2
    assert "model 'hidraem' is not in the image-models list (5 items)" in result.stdout
    assert server.fake.stats.generation_requests == 0


def test_batch_with_a_mistyped_model_stops_early_with_exit_3(serve: Serve, tmp_path: Path) -> None:
    server = serve()
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"prompt {i}\n" for i in range(200)))
    result = run_cli(
        server, "batch", str(source), "-o", str(tmp_path / "o"), "-m", "hidraem", "-c", "4"
    )
    assert result.exit_code == 3
    assert f"the first {STREAK} items all failed" in result.output
    assert server.fake.stats.generation_requests <= STREAK + 3
